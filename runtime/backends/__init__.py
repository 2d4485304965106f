"""Inference backends, picked by name: ``get_backend("onnxruntime", bundle=DIR)``.

    torch        reference, eager PyTorch from a model directory (``--checkpoint DIR``); optional torch.compile
    onnxruntime  the bundle's ONNX graphs; CPU, or the CUDA / TensorRT execution providers of onnxruntime-gpu
    tensorrt     the bundle's TensorRT engines (``latentfuse build-engines``); needs tensorrt + a CUDA GPU

All implement :class:`latentfuse.runtime.backends.base.Backend`. Modules are imported lazily, so a missing
optional dependency only matters for the backend that needs it, and then as one
:class:`latentfuse.model.errors.MissingDependencyError` line that says what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.backends.base import Backend

# name -> (module, class, what it loads from)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("latentfuse.runtime.backends.torch_backend", "TorchBackend", "checkpoint"),
    "onnxruntime": ("latentfuse.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend", "bundle"),
    "tensorrt": ("latentfuse.runtime.backends.tensorrt_backend", "TensorRTBackend", "bundle"),
}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def check_backend_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    aliases = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
    key = aliases.get(key, key)
    if key not in BACKENDS:
        raise LatentfuseError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return key


def backend_source(name: str) -> str:
    """'checkpoint' (a model directory) or 'bundle' (a deployment bundle): what backend ``name`` loads."""
    return BACKENDS[check_backend_name(name)][2]


def get_backend(name: str, *, bundle: str | Path | None = None, checkpoint: str | Path | None = None,
                components=None, **options) -> Backend:
    """Construct backend ``name``.

    ``torch`` takes ``checkpoint`` (a model directory) or ready ``components``
    (:class:`latentfuse.model.components.FusionComponents`); ``onnxruntime`` and ``tensorrt`` take ``bundle``.
    ``options`` go to the backend class (e.g. ``compile=True`` for torch, ``providers=[...]`` /
    ``fp16=True`` for onnxruntime, ``cuda_graph=False`` for tensorrt).
    """
    key = check_backend_name(name)
    module_name, class_name, source = BACKENDS[key]
    cls = getattr(importlib.import_module(module_name), class_name)
    if source == "checkpoint":
        if components is not None:
            return cls(components, **options)
        if checkpoint is None:
            if bundle is not None:
                raise LatentfuseError(f"the {key} backend runs a model directory (--checkpoint DIR), not a bundle")
            raise LatentfuseError(f"the {key} backend needs a model directory (--checkpoint DIR)")
        return cls.from_checkpoint(checkpoint, **options)
    if bundle is None:
        hint = " (--checkpoint is for the torch backend)" if checkpoint is not None else ""
        raise LatentfuseError(f"the {key} backend runs a deployment bundle (--bundle DIR){hint}")
    return cls.from_bundle(bundle, **options)


__all__ = ["Backend", "BACKENDS", "backend_names", "backend_source", "check_backend_name", "get_backend"]
