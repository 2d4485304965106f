"""ONNX Runtime backend: the bundle's four ONNX graphs, on CPU or through onnxruntime-gpu.

Execution providers (``providers=``):

    cpu       CPUExecutionProvider (the ``onnxruntime`` wheel; what CI runs)
    cuda      CUDAExecutionProvider (``onnxruntime-gpu``), CPU fallback
    tensorrt  TensorrtExecutionProvider with its documented options (ONNX Runtime "TensorRT
              Execution Provider" page): ``trt_fp16_enable``, ``trt_engine_cache_enable`` +
              ``trt_engine_cache_path`` (engines cached in the bundle), ``trt_timing_cache_enable``,
              and explicit ``trt_profile_min_shapes`` / ``_opt_`` / ``_max_`` from the manifest
              profile, so one engine serves the whole resolution range; CUDA then CPU fallback.

``providers=None`` picks ``cuda`` when onnxruntime-gpu is installed and sees a GPU, else ``cpu``.
Feeds are cast to the dtype each graph input declares (an fp16 bundle takes fp16 latents), outputs
come back as float32, so the sampler arithmetic stays float32 on the host for every precision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.runtime.backends.bundle import BundleBackend
from latentfuse.runtime.manifest import open_bundle

# ONNX Runtime's type strings -> numpy dtypes
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _import_ort(purpose: str = "the onnxruntime backend"):
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", purpose=purpose) from None
    return onnxruntime


_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                 "none": "ORT_DISABLE_ALL"}


def ort_session(model, providers: Sequence | None = None, *, optimization: str | None = None,
                log_severity: int = 3, threads: int | None = None, optimized: str | os.PathLike | None = None,
                purpose: str = "the onnxruntime backend"):
    """The one place an ONNX Runtime ``InferenceSession`` is made (backend, verification, calibration).

    ``model``: a path, serialized bytes or an ``onnx.ModelProto``; ``providers``: ORT provider entries
    (default CPU); ``optimization``: all / extended / basic / none (None: ORT's default, all);
    ``optimized``: where ORT writes the optimized graph. A file ORT cannot load is one LatentfuseError line
    naming it; a missing onnxruntime one MissingDependencyError line saying what needs it."""
    ort = _import_ort(purpose)
    options = ort.SessionOptions()
    options.log_severity_level = int(log_severity)
    if optimization is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION[optimization])
    if threads:
        options.intra_op_num_threads = int(threads)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if isinstance(model, (str, os.PathLike)):
        source, what = str(model), str(model)
    elif isinstance(model, (bytes, bytearray)):
        source, what = bytes(model), "an in-memory ONNX graph"
    else:
        source, what = model.SerializeToString(), f"ONNX graph {getattr(model.graph, 'name', '') or '(unnamed)'}"
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers or [PROVIDER_NAMES["cpu"]]))
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for bad / truncated files
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise LatentfuseError(f"ONNX Runtime cannot load {what}: {type(err).__name__}: {detail}") from None


def _shape_string(shapes: dict[str, Sequence[int]]) -> str:
    """{"z_a": [1,16,32,32]} -> "z_a:1x16x32x32" (the TensorRT EP's profile-shape syntax)."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in dims)}" for name, dims in shapes.items())


class _Session:
    """One graph: an InferenceSession plus its input dtypes; ``run(**feeds) -> first output``."""

    def __init__(self, path: Path, providers: list, threads: int | None = None):
        self.session = ort_session(path, providers, optimization="all", threads=threads)
        self.path = path
        self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name
        # Each session's CPU arena keeps its largest call's memory for good, and the four graphs' arenas add
        # up (a 720x656 VAE tile: 2.3 GB after three encoder + decoder calls); shrinking the arena after each
        # run hands it back (0.78 GB). It costs time, though: a 640x480 pair 1.72 s against 1.38 s
        # (regression), 2.37 s against 1.79 s (flow). So only a low-memory call shrinks (Backend.low_memory).
        # Measured on ONNX Runtime 1.32 CPU, 2 threads.
        self.shrinking = _import_ort().RunOptions()
        self.shrinking.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, low_memory: bool = False, **feeds: np.ndarray) -> np.ndarray:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise LatentfuseError(f"{self.path.name} needs inputs {missing}; the runtime provides {sorted(feeds)}")
        cast = {n: np.ascontiguousarray(feeds[n], dtype=dt) for n, dt in self.inputs.items()}
        (out,) = self.session.run([self.output], cast, self.shrinking if low_memory else None)
        return np.asarray(out, dtype=np.float32)


class OnnxRuntimeBackend(BundleBackend):
    name = "onnxruntime"

    def __init__(self, bundle_dir: str | Path, providers: str | Sequence | None = None, fp16: bool = False,
                 engine_cache: str | Path | None = None, threads: int | None = None):
        ort = _import_ort()
        self.bundle = open_bundle(bundle_dir)
        self.provider_key = self._pick_provider(ort, providers)
        cache = Path(engine_cache) if engine_cache else self.bundle.root / "ort_trt_cache"
        self.sessions: dict[str, _Session] = {}
        for graph in self.bundle.graph_names:
            providers_list = self._providers(graph, fp16, cache)
            self.sessions[graph] = _Session(self.bundle.graph_path(graph), providers_list, threads)
        self.heads = self._available_heads()

    @classmethod
    def from_bundle(cls, directory: str | Path, **options) -> "OnnxRuntimeBackend":
        return cls(directory, **options)

    # ------------------------------------------------------------------ providers
    @staticmethod
    def _pick_provider(ort, providers) -> str:
        available = ort.get_available_providers()
        if providers is None:
            return "cuda" if PROVIDER_NAMES["cuda"] in available else "cpu"
        key = str(providers if isinstance(providers, str) else providers[0]).lower()
        key = {v.lower(): k for k, v in PROVIDER_NAMES.items()}.get(key, key)
        if key not in PROVIDER_NAMES:
            raise LatentfuseError(f"unknown ONNX Runtime provider {providers!r}: choose one of {', '.join(PROVIDER_NAMES)}")
        if PROVIDER_NAMES[key] not in available:
            raise MissingDependencyError("onnxruntime-gpu", extra="gpu",
                                         purpose=f"the {PROVIDER_NAMES[key]} (available here: {', '.join(available)})")
        return key

    def _providers(self, graph: str, fp16: bool, cache: Path) -> list:
        cpu = PROVIDER_NAMES["cpu"]
        if self.provider_key == "cpu":
            return [cpu]
        cuda = PROVIDER_NAMES["cuda"]
        if self.provider_key == "cuda":
            return [(cuda, {"cudnn_conv_algo_search": "HEURISTIC"}), cpu]
        trt_options = {
            "trt_fp16_enable": bool(fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
        profile = self.bundle.profile(graph)
        if profile:
            trt_options["trt_profile_min_shapes"] = _shape_string(profile["min"])
            trt_options["trt_profile_opt_shapes"] = _shape_string(profile["opt"])
            trt_options["trt_profile_max_shapes"] = _shape_string(profile["max"])
        cache.mkdir(parents=True, exist_ok=True)
        return [(PROVIDER_NAMES["tensorrt"], trt_options), cuda, cpu]

    # ------------------------------------------------------------------ interface
    def _has_graph(self, graph) -> bool:
        return graph in self.sessions

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if graph not in self.sessions:
            raise LatentfuseError(f"{self.bundle.root}: the bundle has no {graph!r} graph")
        return self.sessions[graph].run(self.low_memory, **feeds)

    def describe(self) -> str:
        providers = self.sessions["vae_encoder"].session.get_providers() if self.sessions else []
        return f"onnxruntime {_import_ort().__version__} ({', '.join(providers)}) from {self.bundle.root}"
