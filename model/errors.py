"""User-facing errors.

Every entry point raises :class:`LatentfuseError` (or a subclass) for bad input: the CLI prints its
message on one line and exits non-zero, never a traceback from deep inside.
"""


class LatentfuseError(ValueError):
    """A problem with the user's input (file, shape, dtype, range, configuration)."""


class MissingDependencyError(LatentfuseError, ImportError):
    """An optional dependency (TensorRT, cuda-python, onnxruntime-gpu, ...) is not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        hint = f"pip install 'latentfuse[{extra}]'" if extra else f"pip install {package}"
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{package} is required{what} but is not installed: {hint}")
        self.package = package
