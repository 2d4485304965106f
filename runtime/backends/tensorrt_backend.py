"""TensorRT backend: the bundle's serialized engines (``latentfuse build-engines``), TensorRT 10.x / 11.x.

Follows the TensorRT 10 Python runtime API, as NVIDIA's own samples and demoDiffusion's ``Engine``
class use it (name-based I/O; the binding-index API was removed in 10.0):

    runtime.deserialize_cuda_engine(plan)        -> ICudaEngine
    engine.create_execution_context()            -> IExecutionContext
    engine.num_io_tensors / get_tensor_name(i) / get_tensor_mode(name) / get_tensor_dtype(name)
    engine.get_tensor_profile_shape(name, 0)     -> (min, opt, max) of profile 0
    context.set_input_shape(name, dims)          per call, for dynamic batch / H / W / text length
    context.get_tensor_shape(name)               output shapes once every input shape is set
    context.set_tensor_address(name, ptr)        device pointers of the I/O buffers
    context.execute_async_v3(stream_handle)      enqueue on one CUDA stream

Device buffers are torch CUDA tensors (torch is a dependency anyway; cuda-python is not needed).
CUDA graphs: the first call at a new set of input shapes runs normally (TensorRT does its
shape-dependent setup there, as demoDiffusion does before capturing), the second captures
``execute_async_v3`` into a ``torch.cuda.CUDAGraph`` over persistent buffers, and every further call
at those shapes copies the inputs in and replays the graph. The 5 DiT calls of one fuse all share
one shape, so they replay after the first image. Engines are strongly typed (TensorRT 11 has no
FP16 builder flag): I/O dtypes come from the engine, and host arrays are cast to them.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.runtime.backends.bundle import BundleBackend
from latentfuse.runtime.manifest import open_bundle


def import_tensorrt(purpose: str = "the tensorrt backend"):
    """``tensorrt`` module, or one MissingDependencyError line saying what to install (and what for)."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", extra="trt", purpose=purpose) from None
    return tensorrt


def tensorrt_unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here (None when it can): for tests' skip reasons and the CLI."""
    try:
        import_tensorrt()
    except MissingDependencyError as err:
        return str(err)
    import torch

    if not torch.cuda.is_available():
        return "the tensorrt backend needs an NVIDIA GPU visible to torch (torch.cuda.is_available() is False)"
    return None


def _torch_dtype(trt, torch, dtype):
    table = {
        trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise LatentfuseError(f"engine tensor dtype {dtype} is not supported by the runtime")
    return table[dtype]


class TrtEngine:
    """One deserialized engine with its context, persistent buffers and per-shape CUDA graphs."""

    def __init__(self, trt, torch, runtime, path: Path, stream, cuda_graph: bool = True):
        self.trt, self.torch, self.path, self.stream = trt, torch, path, stream
        try:
            plan = path.read_bytes()
        except OSError as err:
            raise LatentfuseError(f"cannot read TensorRT engine {path}: {err}") from None
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise LatentfuseError(
                f"TensorRT {trt.__version__} cannot deserialize {path}: engines are tied to the TensorRT "
                "version and GPU they were built with; rebuild with `latentfuse build-engines`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}
        self.use_cuda_graph = cuda_graph
        self._buffers: dict[str, object] = {}
        self._shapes: tuple | None = None
        self._graphs: dict[tuple, object] = {}
        self._seen: set[tuple] = set()

    def profile_range(self, name: str) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes of input ``name`` in optimization profile 0."""
        return tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, 0))

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile_range(name)
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise LatentfuseError(
                f"{self.path.name}: input {name!r} of shape {shape} is outside the engine profile "
                f"[{lo} .. {hi}]; rebuild the engines with a wider --profile")

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """(Re)allocate the I/O buffers for ``shapes`` and point the context at them."""
        torch = self.torch
        for name in self.inputs:
            self._check_profile(name, shapes[name])
            if not self.context.set_input_shape(name, shapes[name]):
                raise LatentfuseError(f"{self.path.name}: TensorRT rejected shape {shapes[name]} for {name!r}")
        for name in self.inputs + self.outputs:
            shape = shapes[name] if name in shapes else tuple(self.context.get_tensor_shape(name))
            self._buffers[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, self._buffers[name].data_ptr())

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise LatentfuseError(f"{self.path.name} needs inputs {missing}; the runtime provides {sorted(feeds)}")
        shapes = {n: tuple(int(d) for d in np.shape(feeds[n])) for n in self.inputs}
        key = tuple(shapes[n] for n in self.inputs)
        if key != self._shapes:
            # new shapes: the old buffers (and graphs captured on them) are no longer valid, and the
            # next call at these shapes must run uncaptured first (TensorRT's shape-dependent setup)
            self._graphs.clear()
            self._seen.clear()
            self._bind(shapes)
            self._shapes = key
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                src = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                self._buffers[name].copy_(src.to(self.dtypes[name]), non_blocking=False)
            graph = self._graphs.get(key)
            if graph is not None:
                graph.replay()
            elif self.use_cuda_graph and key in self._seen:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.context.execute_async_v3(self.stream.cuda_stream)
                self._graphs[key] = graph
                graph.replay()
            else:
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise LatentfuseError(f"TensorRT inference of {self.path.name} failed")
                self._seen.add(key)
            out = self._buffers[self.outputs[0]].float().cpu()
        return out.numpy()


class TensorRTBackend(BundleBackend):
    name = "tensorrt"

    def __init__(self, bundle_dir: str | Path, cuda_graph: bool = True, device: int = 0):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise LatentfuseError("the tensorrt backend needs an NVIDIA GPU, and torch sees none")
        self.bundle = open_bundle(bundle_dir)
        torch.cuda.set_device(device)
        self._torch = torch
        self.stream = torch.cuda.Stream()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engines = self.bundle.engine_paths(trt.__version__, torch.cuda.get_device_name())
        if not engines:
            raise LatentfuseError(
                f"{self.bundle.root} has no TensorRT engines for TensorRT {trt.__version__} on this GPU; "
                f"build them with `latentfuse build-engines {self.bundle.root}`")
        self.engines = {g: TrtEngine(trt, torch, self.runtime, p, self.stream, cuda_graph) for g, p in engines.items()}
        for needed in ("vae_encoder", "vae_decoder"):
            if needed not in self.engines:
                raise LatentfuseError(f"{self.bundle.root}: the manifest lists no {needed} engine")
        self.heads = self._available_heads()
        self._trt_version = trt.__version__

    @classmethod
    def from_bundle(cls, directory: str | Path, **options) -> "TensorRTBackend":
        return cls(directory, **options)

    def _has_graph(self, graph) -> bool:
        return graph in self.engines

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if graph not in self.engines:
            raise LatentfuseError(f"{self.bundle.root}: no TensorRT engine for the {graph} graph")
        return self.engines[graph](feeds)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def max_image_size(self):
        """The VAE encoder engine's profile max (H, W): the hard limit of this backend."""
        _, _, hi = self.engines["vae_encoder"].profile_range(self.bundle.input_for("vae_encoder", "image"))
        return int(hi[-2]), int(hi[-1])

    def max_batch_size(self) -> int:
        """The DiT engines' profile max batch: batched windows are chunked to it."""
        dits = [(name, e) for name, e in self.engines.items() if self.bundle.graph_entry(name).kind == "dit"]
        return min(int(e.profile_range(self.bundle.input_for(name, "source_latent_a"))[2][0]) for name, e in dits)

    def min_image_size(self) -> int:
        lo, _, _ = self.engines["vae_encoder"].profile_range(self.bundle.input_for("vae_encoder", "image"))
        return int(max(lo[-2], lo[-1]))

    def describe(self) -> str:
        return f"tensorrt {self._trt_version} ({self._torch.cuda.get_device_name()}) from {self.bundle.root}"
