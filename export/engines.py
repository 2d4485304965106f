"""TensorRT engines for a deployment bundle: optimization profiles, the engine cache and the build.

One engine per graph of the bundle, built from the bundle's (mixed-precision FP16, or INT8 / FP8 Q/DQ:
:mod:`latentfuse.export.quantize`) ONNX graph as a *strongly typed* network (explicit quantization: the
QuantizeLinear / DequantizeLinear pairs set where TensorRT runs INT8 / FP8, no calibrator - TensorRT 11
has none; FP8 needs compute capability >= 8.9, :func:`check_precision_support`): TensorRT 11 removed ``BuilderFlag.FP16`` and weak typing, so tensor types come
from the graph (see :mod:`latentfuse.export.fp16`); on TensorRT 10.x the ``STRONGLY_TYPED`` creation flag gives the
same behaviour (it is deprecated and ignored on 11.x, where strong typing is always on; the
``EXPLICIT_BATCH`` flag is ignored on 10.x and gone on 11.x, so it is never passed). The calls follow
NVIDIA's Python API and the 10.x -> 11.x migration guide: ``Builder.create_network``,
``OnnxParser.parse_from_file`` (external weights resolve next to the file), one
``create_optimization_profile`` with ``set_shape(min, opt, max)`` per dynamic input,
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE)``, ``create_timing_cache`` /
``set_timing_cache`` / ``get_timing_cache().serialize()`` and ``build_serialized_network``.

Everything except :func:`build_engine` is pure Python (profiles, overrides, cache keys, the manifest) and
runs without TensorRT; ``import tensorrt`` happens only inside the build.

The engine cache key is the SHA-256 of (ONNX graph + external data hash, the profile, the TensorRT
version, the GPU name and compute capability): a rebuild with the same key is skipped, any change -
new weights, another profile, a TensorRT upgrade, another GPU - builds again. Unlike demoDiffusion's
cache, the profile (the shapes) is part of the key.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from latentfuse.export.bundle import record_files, save_manifest
from latentfuse.model.atomic import atomic_file
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.geometry import LATENT_FACTOR, PIXEL_MULTIPLE
from latentfuse.runtime.backends.tensorrt_backend import import_tensorrt
from latentfuse.runtime.manifest import (BATCH, HEIGHT, LATENT_HEIGHT, LATENT_WIDTH, MANIFEST_NAME, TEXT_LENGTH, WIDTH,
                                         Bundle, load_manifest, sha256_file, sha256_json)

ENGINE_DIR = "engines"
LEVELS = ("min", "opt", "max")
BUILD_PURPOSE = "building TensorRT engines (needs an NVIDIA GPU)"

# The manifest's symbolic dims (runtime.manifest) and what each measures: pixel size, latent size
# (pixels / VAE factor), batch, tokens.
_DIM_ROLES = {BATCH: "batch", HEIGHT: "height", WIDTH: "width", LATENT_HEIGHT: "latent_height",
              LATENT_WIDTH: "latent_width", TEXT_LENGTH: "text"}


def dim_role(name) -> str | None:
    """The quantity a symbolic dim measures (``None`` for a static or unknown dim)."""
    if not isinstance(name, str):
        return None
    return _DIM_ROLES.get(name)


def round_up(x: int, multiple: int = PIXEL_MULTIPLE) -> int:
    return int(math.ceil(x / multiple) * multiple)


# --- profiles ------------------------------------------------------------------------------------
# Layout everywhere (manifest, export.graphs.GraphSpec.profile, engine entries):
#     {"min": {input: dims}, "opt": {input: dims}, "max": {input: dims}}


@dataclass(frozen=True)
class Extent:
    """The values one quantity (batch, pixel height, ...) takes at the profile's min / opt / max."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not (1 <= self.min <= self.opt <= self.max):
            raise LatentfuseError(f"profile extent needs 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    def at(self, level: str) -> int:
        return getattr(self, level)


def aspect_shapes(min_side: int, max_side: int, aspect_ratios: Iterable[str] = ("16:9", "4:3", "1:1"),
                  multiple: int = PIXEL_MULTIPLE) -> list[tuple[int, int]]:
    """The extreme (H, W) of every supported image size: for each aspect ratio, in both orientations,
    the image whose short side is ``min_side`` and the one whose long side is ``max_side``, padded up to
    ``multiple`` as the runtime pads. A profile that accepts these accepts every size in between."""
    if min_side < 1 or max_side < min_side:
        raise LatentfuseError(f"resolution range needs 1 <= min <= max, got {min_side}..{max_side}")
    shapes = set()
    for ratio in aspect_ratios:
        a, b = (float(v) for v in str(ratio).split(":"))
        k = max(a, b) / min(a, b)
        small = (round_up(min_side, multiple), round_up(int(math.ceil(min_side * k)), multiple))
        large = (round_up(int(math.ceil(max_side / k)), multiple), round_up(max_side, multiple))
        for short, long in (small, large):
            long = min(long, round_up(max_side, multiple))    # an elongated ratio cannot exceed max
            short = max(short, round_up(min_side, multiple))  # ... nor go below min
            shapes.update({(long, short), (short, long)})
    return sorted(shapes)


def covers(profile: Mapping[str, Mapping[str, Sequence[int]]], name: str, shape: Sequence[int]) -> bool:
    """Whether a concrete shape of input ``name`` lies inside the profile's min/max box."""
    lo, hi = profile["min"][name], profile["max"][name]
    return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))


def spatial_shape(spec: Mapping, height: int, width: int, profile: Mapping, latent_factor: int = LATENT_FACTOR) -> list[int] | None:
    """The shape input ``spec`` takes for an image of ``height`` x ``width`` (other dims at their opt);
    ``None`` for an input without spatial dims."""
    roles = [dim_role(d) for d in spec["shape"]]
    if not any(r in ("height", "width", "latent_height", "latent_width") for r in roles):
        return None
    shape = list(profile["opt"][spec["name"]])
    for axis, role in enumerate(roles):
        if role in ("height", "latent_height"):
            shape[axis] = height // latent_factor if role.startswith("latent_") else height
        elif role in ("width", "latent_width"):
            shape[axis] = width // latent_factor if role.startswith("latent_") else width
    return shape


def uncovered_shapes(profile: Mapping, inputs: Sequence[Mapping], resolution: Mapping | None,
                     latent_factor: int = LATENT_FACTOR) -> list[tuple[int, int]]:
    """Image sizes of the bundle's promised range (every aspect ratio, both orientations, at the min and
    max side) that the profile rejects - so a narrowing ``--profile`` override is reported, not silent."""
    if not resolution or "min" not in resolution or "max" not in resolution:
        return []
    shapes = aspect_shapes(int(resolution["min"]), int(resolution["max"]),
                           resolution.get("aspect_ratios") or ("1:1",),
                           int(resolution.get("multiple", PIXEL_MULTIPLE)))
    missing = []
    for h, w in shapes:
        for spec in inputs:
            if spec["name"] not in profile["min"]:
                continue
            shape = spatial_shape(spec, h, w, profile, latent_factor)
            if shape is not None and not covers(profile, spec["name"], shape):
                missing.append((h, w))
                break
    return missing


def profile_from_extents(inputs: Sequence[Mapping], extents: Mapping[str, Extent],
                         latent_factor: int = LATENT_FACTOR, graph: str = "") -> dict:
    """The profile of a graph's inputs from the range of each quantity.

    ``inputs`` are manifest entries ``{"name", "dtype", "shape"}`` whose dynamic dims are named (see
    ``_DIM_ROLES``); ``extents`` maps a role (``batch``, ``height``, ``width``, ``text``) to its range.
    Latent dims are pixel dims over ``latent_factor``.
    """
    profile: dict[str, dict[str, list[int]]] = {level: {} for level in LEVELS}
    for spec in inputs:
        for level in LEVELS:
            profile[level][spec["name"]] = []
        for d in spec["shape"]:
            if isinstance(d, int) and d >= 0:
                for level in LEVELS:
                    profile[level][spec["name"]].append(int(d))
                continue
            role = dim_role(d)
            if role is None:
                raise LatentfuseError(
                    f"graph {graph!r} input {spec['name']!r} has a dynamic dim {d!r} this builder cannot size; "
                    f"name it one of {sorted(set(_DIM_ROLES))} or give the profile in the manifest")
            base = role.replace("latent_", "")
            if base not in extents:
                raise LatentfuseError(f"graph {graph!r} input {spec['name']!r}: no {base} range for dim {d!r}")
            for level in LEVELS:
                v = extents[base].at(level)
                if role.startswith("latent_"):
                    if v % latent_factor:
                        raise LatentfuseError(f"{base} {v} is not a multiple of the latent factor {latent_factor}")
                    v //= latent_factor
                profile[level][spec["name"]].append(int(v))
    return profile


_SIZE = re.compile(r"^\d+(x\d+)*$")


def parse_profile_override(text: str) -> tuple[str, dict[str, Extent]]:
    """Parse ``GRAPH=MIN:OPT:MAX`` from the command line.

    Each of MIN/OPT/MAX is ``HxW`` (pixel size; latent inputs follow), ``BxHxW`` (with batch), ``L``
    (tokens, text graphs) or ``BxL``. Examples: ``dit_flow=256x256:512x512:1024x1024``,
    ``vae_decoder=1x256x256:1x768x768:2x1536x1536``, ``text_encoder=1:64:128``.
    """
    if "=" not in text:
        raise LatentfuseError(f"--profile {text!r}: expected GRAPH=MIN:OPT:MAX, e.g. dit_flow=256x256:512x512:1024x1024")
    graph, spec = text.split("=", 1)
    levels = spec.split(":")
    if len(levels) != 3 or not all(_SIZE.match(level) for level in levels):
        raise LatentfuseError(f"--profile {text!r}: expected three sizes MIN:OPT:MAX like 256x256:512x512:1024x1024")
    parsed = [[int(v) for v in level.split("x")] for level in levels]
    forms = {len(p) for p in parsed}
    if len(forms) != 1:
        raise LatentfuseError(f"--profile {text!r}: MIN, OPT and MAX must have the same form")
    n = forms.pop()
    names = {1: ("text",), 2: ("height", "width"), 3: ("batch", "height", "width")}.get(n)
    if names is None:
        raise LatentfuseError(f"--profile {text!r}: sizes have 1 to 3 numbers (L, HxW or BxHxW)")
    if n == 2 and graph.startswith("text"):
        names = ("batch", "text")
    extents = {name: Extent(*(p[i] for p in parsed)) for i, name in enumerate(names)}
    for name in ("height", "width"):
        if name in extents:
            bad = [v for v in (extents[name].min, extents[name].opt, extents[name].max) if v % PIXEL_MULTIPLE]
            if bad:
                raise LatentfuseError(f"--profile {text!r}: image sizes must be multiples of {PIXEL_MULTIPLE} "
                                      f"(the runtime pads to it), got {bad[0]}")
    return graph.strip(), extents


def manifest_extents(profile: Mapping[str, Mapping[str, Sequence[int]]], inputs: Sequence[Mapping],
                     latent_factor: int = LATENT_FACTOR) -> dict[str, Extent]:
    """Read the role extents back out of a manifest profile (so an override can change only some)."""
    found: dict[str, list] = {}
    for spec in inputs:
        if not all(spec["name"] in (profile.get(level) or {}) for level in LEVELS):
            continue
        for axis, d in enumerate(spec["shape"]):
            role = dim_role(d)
            if role is None:
                continue
            scale = latent_factor if role.startswith("latent_") else 1
            found.setdefault(role.replace("latent_", ""),
                             [profile[level][spec["name"]][axis] * scale for level in LEVELS])
    return {role: Extent(*vals) for role, vals in found.items()}


def resolve_profile(graph: str, entry: Mapping, override: Mapping[str, Extent] | None = None,
                    latent_factor: int = LATENT_FACTOR) -> dict:
    """The profile to build ``graph`` with: the manifest's, with ``override`` extents replacing its own."""
    inputs = entry.get("inputs") or []
    base = entry.get("profile") or {}
    if override:
        extents = {**manifest_extents(base, inputs, latent_factor), **override}
        profile = profile_from_extents(inputs, extents, latent_factor, graph)
    else:
        try:
            profile = {level: {name: list(map(int, dims)) for name, dims in base[level].items()} for level in LEVELS}
        except (KeyError, AttributeError, TypeError):
            raise LatentfuseError(f"graph {graph!r}: the manifest profile needs min / opt / max "
                                  f"{{input: dims}} maps, got {base!r}") from None
    validate_profile(graph, profile, inputs)
    return profile


def validate_profile(graph: str, profile: Mapping, inputs: Sequence[Mapping]) -> None:
    """min <= opt <= max per dim, static dims kept, every dynamic input present."""
    for spec in inputs:
        name = spec["name"]
        dynamic = any(not (isinstance(d, int) and d >= 0) for d in spec["shape"])
        if not all(name in profile.get(level, {}) for level in LEVELS):
            if dynamic:
                raise LatentfuseError(f"graph {graph!r}: dynamic input {name!r} has no profile")
            continue
        rank = len(spec["shape"])
        if any(len(profile[level][name]) != rank for level in LEVELS):
            raise LatentfuseError(f"graph {graph!r} input {name!r}: profile rank differs from shape {spec['shape']}")
        for axis, d in enumerate(spec["shape"]):
            lo, mid, hi = (profile[level][name][axis] for level in LEVELS)
            if not (1 <= lo <= mid <= hi):
                raise LatentfuseError(f"graph {graph!r} input {name!r} dim {axis}: needs 1 <= min <= opt <= max, "
                                      f"got {lo}:{mid}:{hi}")
            if isinstance(d, int) and d >= 0 and not (lo == mid == hi == d):
                raise LatentfuseError(f"graph {graph!r} input {name!r} dim {axis} is static ({d}); "
                                      f"the profile gives {lo}:{mid}:{hi}")


# --- cache key -----------------------------------------------------------------------------------


def onnx_sha256(path: str | os.PathLike) -> str:
    """Hash of an ONNX graph together with its external-data files (new weights -> new hash)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    if not path.is_file():
        raise LatentfuseError(f"ONNX graph {path} does not exist")
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({
        next(e.value for e in t.external_data if e.key == "location")
        for t in model.graph.initializer if uses_external_data(t)
    })
    h = hashlib.sha256(sha256_file(path).encode())
    for loc in locations:
        data = path.parent / loc
        if not data.is_file():
            raise LatentfuseError(f"{path} refers to external data {loc!r}, which is missing next to it")
        h.update(loc.encode())
        h.update(sha256_file(data).encode())
    return h.hexdigest()


def cache_key(onnx_hash: str, profile: Mapping, trt_version: str, gpu: Mapping | str) -> str:
    """Deterministic key of an engine build: same inputs -> same key, any change -> another key."""
    payload = {
        "onnx": onnx_hash,
        "profile": {level: {name: list(map(int, dims)) for name, dims in sorted(profile[level].items())}
                    for level in LEVELS},
        "tensorrt": str(trt_version),
        "gpu": gpu if isinstance(gpu, str) else {k: gpu[k] for k in sorted(gpu)},
    }
    return sha256_json(payload)


def gpu_identity() -> dict:
    """``{"name", "compute_capability"}`` of CUDA device 0 (torch, then cuda-python, then nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return {"name": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        name, cap = (s.strip() for s in out.split(",", 1))
        return {"name": name, "compute_capability": cap}
    except Exception:
        raise LatentfuseError("no NVIDIA GPU found (torch.cuda, cuda-python and nvidia-smi all failed): "
                              "TensorRT engines are built on the GPU that will run them") from None


# Lowest compute capability whose tensor cores (and TensorRT kernels) run each quantized precision:
# FP8 from Ada / Hopper (SM 8.9); INT8 on every GPU TensorRT 10 supports (Turing SM 7.5 and newer,
# Jetson Orin SM 8.7 and Xavier SM 7.2 included).
MIN_COMPUTE_CAPABILITY = {"fp8": (8, 9), "int8": (7, 2)}


def _capability(gpu: Mapping | str) -> tuple[int, int] | None:
    cap = gpu.get("compute_capability") if isinstance(gpu, Mapping) else None
    try:
        major, minor = (int(v) for v in str(cap).split(".", 1))
    except (TypeError, ValueError):
        return None
    return major, minor


def check_precision_support(precisions: Iterable[str], gpu: Mapping) -> None:
    """Refuse a bundle precision the GPU cannot run, naming the GPU and what will work instead.

    ``gpu``: ``{"name", "compute_capability"}`` as :func:`gpu_identity` returns (a device profile: no
    GPU is needed to call this). FP8 needs compute capability >= 8.9 (Jetson AGX Orin is SM 8.7:
    INT8 or FP16 there)."""
    cap = _capability(gpu)
    if cap is None:
        return
    name = gpu.get("name", "this GPU") if isinstance(gpu, Mapping) else str(gpu)
    for precision in dict.fromkeys(precisions):
        need = MIN_COMPUTE_CAPABILITY.get(precision)
        if need is not None and cap < need:
            works = [p for p, c in MIN_COMPUTE_CAPABILITY.items() if cap >= c] + ["fp16"]
            raise LatentfuseError(
                f"{precision} engines need compute capability >= {need[0]}.{need[1]}; {name} is SM {cap[0]}.{cap[1]}: "
                f"export the bundle with --precision {' or '.join(works)} for it")


# --- the build (needs TensorRT) ------------------------------------------------------------------


def network_flags(trt) -> int:
    """Strongly typed network flags for TensorRT 10.x and 11.x (the flag is ignored, maybe absent, on 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return (1 << int(flag)) if flag is not None else 0


def build_engine(onnx_path: str | os.PathLike, profile: Mapping, out_path: str | os.PathLike, *,
                 timing_cache: str | os.PathLike | None = None, workspace_gb: float | None = None,
                 verbose: bool = False) -> dict:
    """Build one strongly typed engine from ``onnx_path`` and write it atomically to ``out_path``."""
    trt = import_tensorrt(BUILD_PURPOSE)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LatentfuseError(f"TensorRT could not parse {onnx_path}: {errors or 'unknown parser error'}")

    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in profile["min"]:
            if any(d < 0 for d in tensor.shape):
                raise LatentfuseError(f"{onnx_path}: dynamic input {tensor.name!r} {tuple(tensor.shape)} has no profile")
            continue
        opt_profile.set_shape(tensor.name, *(tuple(profile[level][tensor.name]) for level in LEVELS))
    config.add_optimization_profile(opt_profile)

    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        try:
            cache = config.create_timing_cache(blob)
            accepted = config.set_timing_cache(cache, ignore_mismatch=False)
        except Exception:  # a corrupt cache file
            accepted = False
        if not accepted:  # written by another TensorRT version or GPU: start a fresh one
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise LatentfuseError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    if timing_cache is not None:
        updated = config.get_timing_cache()
        with atomic_file(timing_cache) as tmp:
            with open(tmp, "wb") as f:
                f.write(memoryview(updated.serialize()))
    return {"seconds": seconds, "bytes": Path(out_path).stat().st_size}


# --- the bundle ----------------------------------------------------------------------------------


def graph_onnx(bundle: Path, graph: str, entry: Mapping) -> Path:
    """The ONNX file an engine is built from (the bundle's graph: mixed FP16 in an fp16 bundle)."""
    name = entry.get("file")
    if not name:
        raise LatentfuseError(f"{bundle / MANIFEST_NAME}: graph {graph!r} has no 'file'")
    return bundle / name


def plan_builds(bundle: str | os.PathLike, overrides: Mapping[str, Mapping[str, Extent]] | None = None,
                graphs: Sequence[str] | None = None, *, trt_version: str, gpu: Mapping) -> list[dict]:
    """What :func:`build_bundle_engines` would do for each graph: key, profile, and whether to skip."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(manifest["graphs"])) + sorted(set(graphs or []) - set(manifest["graphs"]))
    if unknown:
        raise LatentfuseError(f"no graph {unknown[0]!r} in {bundle / MANIFEST_NAME} (graphs: {', '.join(manifest['graphs'])})")
    factor = Bundle(bundle, manifest).latent_factor
    jobs = []
    for name, entry in manifest["graphs"].items():
        if graphs and name not in graphs:
            continue
        onnx_path = graph_onnx(bundle, name, entry)
        profile = resolve_profile(name, entry, overrides.get(name), factor)
        key = cache_key(onnx_sha256(onnx_path), profile, trt_version, gpu)
        previous = (manifest.get("engines") or {}).get(name) or {}
        engine_file = previous.get("file") or f"{ENGINE_DIR}/{name}.engine"
        cached = (previous.get("cache_key") == key and (bundle / engine_file).is_file()
                  and sha256_file(bundle / engine_file) == previous.get("sha256"))
        jobs.append({"graph": name, "onnx": str(onnx_path), "profile": profile, "cache_key": key,
                     "file": engine_file, "cached": cached, "precision": entry.get("precision", "fp32"),
                     "uncovered": uncovered_shapes(profile, entry.get("inputs") or [], manifest.get("resolution"),
                                                   factor)})
    return jobs


def build_bundle_engines(bundle: str | os.PathLike, overrides: Mapping[str, Mapping[str, Extent]] | None = None,
                         *, graphs: Sequence[str] | None = None, timing_cache: str | os.PathLike | None = None,
                         workspace_gb: float | None = None, force: bool = False, progress: bool = True) -> list[dict]:
    """Build (or reuse) an engine per graph of ``bundle`` and record each one in the manifest."""
    from tqdm.auto import tqdm

    trt = import_tensorrt(BUILD_PURPOSE)
    bundle = Path(bundle)
    gpu = gpu_identity()
    trt_version = str(trt.__version__)
    jobs = plan_builds(bundle, overrides, graphs, trt_version=trt_version, gpu=gpu)
    check_precision_support([job["precision"] for job in jobs], gpu)
    if timing_cache is None:
        timing_cache = bundle / ENGINE_DIR / "timing.cache"
    for job in tqdm(jobs, desc="TensorRT engines", disable=not progress):
        if job["cached"] and not force:
            job["status"] = "cached"
            continue
        out = bundle / job["file"]
        stats = build_engine(job["onnx"], job["profile"], out, timing_cache=timing_cache, workspace_gb=workspace_gb)
        job.update(stats, status="built")
        manifest = load_manifest(bundle)  # re-read: keep other writers' entries
        manifest.setdefault("engines", {})[job["graph"]] = {
            "file": job["file"], "sha256": sha256_file(out), "cache_key": job["cache_key"],
            "trt_version": trt_version, "gpu": gpu, "profile": job["profile"],
        }
        record_files(bundle, manifest, [job["file"]])
        save_manifest(bundle, manifest)
    return jobs
