"""One prepared, unattended GPU check (issue 30): what ``bench/device_check.sh OUT_DIR [--smoke]`` runs.

The shell script installs the package into a throwaway folder (the machine's own torch untouched) and
runs each *part* below as its own process under a time limit, so a part that hangs or runs out of its
seconds loses only its own unfinished rows; after every part it assembles ``device_check.json`` and
``device_check.md`` (schema: docs/device-check.md), both written atomically.

    machine    GPU, driver, versions, where torch and latentfuse were imported from, a matmul peak
    latency    the bundled default and the ``paper`` preset (random weights) on ``--backend torch``:
               fp32 / fp16 DiT, regression / flow (5 NFE), at the demo size, 640x480 and 1024x1024,
               per-stage median (runtime.latency: synchronised stage edges) after warm-up
    aoti       AOTInductor packages of the default model's graphs (export.aoti.compile_graph) for the
               device, run through the Python pipeline: per-stage latency and PSNR against eager torch
    tensorrt   engines and latency when ``import tensorrt`` works; otherwise the reason, recorded
    cpp        the C++ host (runtime/cpp) built against the machine's libtorch and checked against the
               Python pipeline (PSNR) when the seconds left allow; otherwise why not

``--smoke`` runs the same parts on the CPU at tiny sizes (the ``tiny`` preset in place of ``paper``,
whose random init alone takes longer than a smoke run), with the same schema, so CI keeps the check
from rotting.

    python -m latentfuse.bench.device_check part NAME --work DIR --budget S [--smoke]
    python -m latentfuse.bench.device_check skip NAME --work DIR --reason TEXT
    python -m latentfuse.bench.device_check report --work DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from latentfuse.model.atomic import atomic_file

SCHEMA = "latentfuse.device_check/1"
PARTS = ("machine", "latency", "aoti", "tensorrt", "cpp")
STAGE_NAMES = ("VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail", "total")  # runtime.latency.STAGES + total
DIT_DTYPES = ("fp32", "fp16")  # the torch DiT's dtype in the latency part
MODES = ("regression", "flow")
TASK = "vif"
SEED = 0

# MMAIF Table 5 ("Whole pipeline latency under 1024x1024 resolution", seconds per image) and section
# 4.6.4, as printed (../shared/seeds/001_*.txt). The paper does not say which GPU timed them; the
# only GPU it names is the training one (2x RTX 4090).
PAPER = {
    "source": "MMAIF Table 5 and section 4.6.4",
    "size": "1024x1024",
    "gpu": "not stated in the paper (it names only its training GPUs, 2x NVIDIA RTX 4090)",
    "rows": [
        {"method": "MMAIF (Reg)", "mode": "regression", "seconds": 0.108, "bound": "="},
        {"method": "MMAIF (flow)", "mode": "flow", "seconds": 0.6, "bound": "<",
         "note": "section 4.6.4: 'less than 0.6 seconds' with the velocity-reuse sampler"},
        {"method": "NAFNet+PSLPT", "mode": None, "seconds": 0.345 + 0.013, "bound": "=",
         "note": "restoration 0.345 s + fusion 0.013 s"},
        {"method": "SwinIR+EMMA", "mode": None, "seconds": 5.78 + 0.02, "bound": "="},
        {"method": "DA-CLIP+EMMA", "mode": None, "seconds": 19.45 + 0.02, "bound": "="},
    ],
}


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Size:
    role: str    # demo | camera | table5
    height: int
    width: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    sizes: tuple[Size, ...]
    models: tuple[tuple[str, str], ...]   # (name, source): "bundled" or a preset's random weights
    warmup: int
    runs: int
    aoti_graphs: tuple[str, ...]


def demo_size() -> tuple[int, int]:
    """(H, W) of the pair `latentfuse demo` times first: the first shipped VIF sample."""
    from latentfuse.model.data.samples import sample_pairs
    from latentfuse.model.image_io import read_image

    return read_image(sample_pairs(TASK)[0].a).shape[:2]


AOTI_GRAPHS = ("dit_regression", "vae_decoder", "vae_encoder", "dit_flow")
AOTI_ENV = "DEVICE_CHECK_AOTI_GRAPHS"


def aoti_graphs(smoke: bool) -> tuple[str, ...]:
    """The graphs the aoti part compiles, in priority order: the DiT first (what the latent space makes
    cheap); never the text encoder (the canonical prompt comes from the prompt cache, as in deployment).
    --smoke compiles none (each takes 40 s or more of C++ compile on two CPU cores); ``$DEVICE_CHECK_AOTI_GRAPHS``
    (comma-separated) overrides either choice."""
    text = os.environ.get(AOTI_ENV)
    if text is None:
        return () if smoke else AOTI_GRAPHS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in AOTI_GRAPHS]
    if unknown:
        raise ValueError(f"{AOTI_ENV}: unknown graph(s) {', '.join(unknown)}; choose from {', '.join(AOTI_GRAPHS)}")
    return names


def settings(smoke: bool) -> Settings:
    h, w = demo_size()
    if smoke:
        # same roles, sides divided so that a CPU call takes a fraction of a second; one timed call
        sizes = (Size("demo", h // 4, w // 4), Size("camera", 480 // 8, 640 // 8), Size("table5", 1024 // 16, 1024 // 16))
        return Settings(True, "cpu", sizes, (("default", "bundled"), ("tiny", "random")), 1, 1, aoti_graphs(True))
    sizes = (Size("demo", h, w), Size("camera", 480, 640), Size("table5", 1024, 1024))
    return Settings(False, "cuda", sizes, (("default", "bundled"), ("paper", "random")), 2, 5, aoti_graphs(False))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def progress(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ part record


class Part:
    """One part's record, saved atomically after every change so a killed part keeps its rows."""

    def __init__(self, name: str, work: Path, budget_s: float, smoke: bool):
        self.name = name
        self.path = work / f"{name}.json"
        self.start = time.monotonic()
        self.budget_s = float(budget_s)
        self.data: dict[str, Any] = {"part": name, "status": "running", "reason": None, "budget_s": self.budget_s,
                                     "seconds": 0.0, "smoke": smoke, "started": now_iso(), "rows": []}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.start, 2)
        write_json(self.path, self.data)

    def plan(self, configs: dict[tuple, dict]) -> None:
        """Every configuration's rows up front, as ``pending``: a part killed at its limit still reports
        each one (assemble() turns them into ``timeout``)."""
        self._slots = {key: stage_rows(base, status="pending", reason="not reached") for key, base in configs.items()}
        self._flush()

    def put(self, key: tuple, rows: Sequence[dict]) -> None:
        self._slots[key] = list(rows)
        self._flush()

    def _flush(self) -> None:
        self.data["rows"] = [r for rows in self._slots.values() for r in rows]
        self.save()

    def finish(self, status: str = "ok", reason: str | None = None) -> None:
        self.data.update(status=status, reason=reason)
        self.save()


def stage_rows(base: dict, summary=None, status: str = "ok", reason: str | None = None) -> list[dict]:
    """One row per stage of one configuration: the medians of ``summary`` (a runtime.latency
    LatencySummary), or empty times with ``status`` and ``reason``."""
    rows = []
    for stage in STAGE_NAMES:
        # every field in every row (null where not measured), so readers need no per-status schema
        row = {"nfe": None, "prompt_cached": None, "sampler": None, "finite": None, "peak_mem_mib": None,
               "vae_tiled": None, **base, "stage": stage, "status": status, "reason": reason,
               "median_ms": None, "min_ms": None, "max_ms": None, "runs": 0}
        if summary is not None:
            lo, hi = summary.spread[stage]
            row.update(median_ms=round(summary.median[stage] * 1e3, 3), min_ms=round(lo * 1e3, 3),
                       max_ms=round(hi * 1e3, 3), runs=summary.runs, nfe=summary.nfe,
                       prompt_cached=summary.prompt_cached)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ helpers


def load_model(name: str, source: str):
    """FusionComponents: the bundled default, or a preset with random weights (seed 0)."""
    from latentfuse.model.components import FusionComponents

    if source == "bundled":
        return FusionComponents.from_pretrained()
    return FusionComponents.from_preset(name, seed=0)


def pair_at(size: Size):
    """The first shipped VIF sample resampled to ``size`` (bench.user_pair.sample_pair)."""
    from latentfuse.bench.user_pair import sample_pair

    return sample_pair((size.height, size.width), TASK)


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def finite_db(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)


def free_device(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def time_config(pipe, a, b, mode: str, cfg: Settings, label: str):
    """Warm-up calls (the first one's image kept: finite or not), then the median of ``cfg.runs``
    (Pipeline.benchmark, runtime.latency), with the device's peak memory (bench.memory.PeakMemory)."""
    import numpy as np

    from latentfuse.bench.memory import PeakMemory

    first = None
    for _ in range(max(1, cfg.warmup)):
        result = pipe(a, b, task=TASK, mode=mode, seed=SEED)
        first = first or result
    with PeakMemory(cfg.device) as peak:
        summary = pipe.benchmark(a, b, warmup=0, runs=cfg.runs, label=label, task=TASK, mode=mode, seed=SEED)
    extra = {"finite": bool(np.isfinite(first.image).all()), "peak_mem_mib": round(peak.peak_bytes / 2 ** 20, 1),
             "sampler": first.sampler, "vae_tiled": bool(first.info.get("tiled"))}
    return summary, first, extra


def is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError"


# ------------------------------------------------------------------------------------ parts


def part_machine(part: Part, cfg: Settings) -> None:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
        "python_executable": sys.executable, "cpu_count": os.cpu_count(), "device": cfg.device,
        "torch_file": torch.__file__,
        "latentfuse_file": __file__,
        "commit": os.environ.get("LATENTFUSE_COMMIT") or "unknown",
    }
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for dist in ("latentfuse", "numpy", "onnx", "onnxruntime", "transformers", "diffusers", "safetensors",
                 "scikit-image", "triton", "tensorrt"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1),
               "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run([smi, "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
                if out:
                    driver, sm_clock, power = (v.strip() for v in (out[0].split(",") + ["", ""])[:3])
                    gpu.update(driver=driver, max_sm_clock=sm_clock, power_limit=power)
            except (OSError, subprocess.SubprocessError) as err:
                gpu["nvidia_smi"] = one_line(err)
    info["gpu"] = gpu
    if cfg.device == "cuda" and gpu is None:
        part.data.update(machine=info, versions=versions)
        part.finish("error", "torch sees no CUDA GPU (torch.cuda.is_available() is False): run with --smoke "
                             "for the CPU check")
        return
    # the practical compute ceiling the stage times are read against (bench.flops.matmul_peak_flops)
    from latentfuse.bench.flops import matmul_peak_flops

    n = 512 if cfg.smoke else 8192
    peaks = {"fp32": matmul_peak_flops(cfg.device, torch.float32, n=n)}
    if cfg.device == "cuda":
        peaks["fp16"] = matmul_peak_flops(cfg.device, torch.float16, n=n)
    info["matmul_peak_tflops"] = {k: round(v / 1e12, 3) for k, v in peaks.items()}
    info["matmul_n"] = n
    part.data.update(machine=info, versions=versions)
    part.finish()


def part_latency(part: Part, cfg: Settings) -> None:
    """Every model x precision x mode x size on the torch backend, in that nesting; a configuration that
    the part's seconds cannot cover is recorded as skipped (with the projection), never dropped."""
    from latentfuse.runtime.pipeline import Pipeline

    configs = {(m, p, mode, s): _base(m, src, p, mode, s, cfg)
               for m, src in cfg.models for p in DIT_DTYPES for s in cfg.sizes for mode in MODES}
    part.plan(configs)
    inputs = {s: pair_at(s) for s in cfg.sizes}
    calls = max(1, cfg.warmup) + cfg.runs
    # seconds per call and pixel, by model and mode: the latest measurement (a busy machine's outlier
    # would otherwise skip everything after it; a wrong projection costs at most a timeout row)
    rate: dict[tuple[str, str], float] = {}
    for model, source in cfg.models:
        mine = [k for k in configs if k[0] == model]
        t0 = time.monotonic()
        try:
            comp = load_model(model, source)
        except Exception as err:  # noqa: BLE001 - one model failing to build must not cost the other
            for key in mine:
                part.put(key, stage_rows(configs[key], status="error", reason=one_line(err)))
            continue
        part.data.setdefault("load_seconds", {})[model] = round(time.monotonic() - t0, 2)
        progress(f"latency: {model} ({source}) loaded in {time.monotonic() - t0:.1f} s")
        for precision in DIT_DTYPES:
            keys = [k for k in mine if k[1] == precision]
            if part.left() <= 0:  # building the pipeline (moving / casting the model) costs seconds too
                for key in keys:
                    part.put(key, stage_rows(configs[key], status="skipped", reason="time budget: 0 s left"))
                continue
            # the torch backend moves / casts the DiTs in place: fp32 runs first, then the same modules in fp16
            try:
                pipe = Pipeline.from_components(comp, device=cfg.device,
                                                dtype={"fp32": "float32", "fp16": "float16"}[precision])
            except Exception as err:  # noqa: BLE001
                for key in keys:
                    part.put(key, stage_rows(configs[key], status="error", reason=one_line(err)))
                continue
            for key in keys:
                _, _, mode, size = key
                pixels = size.height * size.width
                # projection: this mode's slowest rate so far, else the other mode's (flow: 5 NFE, ~3x)
                other = rate.get((model, "regression" if mode == "flow" else "flow"))
                per_pixel = rate.get((model, mode)) or (other and other * (3.0 if mode == "flow" else 1 / 3))
                projected = (per_pixel or 0.0) * pixels * calls
                if projected and projected > part.left():
                    part.put(key, stage_rows(configs[key], status="skipped", reason=(
                        f"time budget: projected {projected:.1f} s, {max(part.left(), 0):.1f} s left")))
                    continue
                start = time.monotonic()
                try:
                    summary, _, extra = time_config(pipe, *inputs[size], mode, cfg, f"{model} {precision} {mode}")
                except Exception as err:  # noqa: BLE001 - recorded per configuration
                    status = "oom" if is_oom(err) else "error"
                    free_device(cfg.device)
                    part.put(key, stage_rows(configs[key], status=status, reason=one_line(err)))
                    progress(f"latency: {model} {precision} {mode} {size.label}: {status}: {one_line(err)}")
                    continue
                rate[(model, mode)] = (time.monotonic() - start) / calls / pixels
                part.put(key, stage_rows({**configs[key], **extra}, summary))
                progress(f"latency: {model} {precision} {mode} {size.label}: "
                         f"{summary.median['total'] * 1e3:.1f} ms total (DiT {summary.median['DiT'] * 1e3:.1f} ms)")
            del pipe
            free_device(cfg.device)
        del comp
        free_device(cfg.device)
    part.finish()


def _base(model: str, source: str, precision: str, mode: str, size: Size, cfg: Settings, backend: str = "torch") -> dict:
    return {"part": "latency", "model": model, "weights": source, "backend": backend, "device": cfg.device,
            "precision": precision, "mode": mode, "size": size.label, "role": size.role,
            "height": size.height, "width": size.width}


class AotiGraphs:
    """The torch backend with some graphs swapped for AOTInductor packages (``torch._inductor.aoti_load_package``),
    the others eager: what the C++ host's libtorch backend runs, here driven by the Python pipeline."""

    def __init__(self, backend, packages: dict, specs: dict):
        import torch

        self.backend = backend
        self.packages = packages
        names = {n: specs[n].input_names for n in packages}
        if "vae_encoder" in packages:
            backend.encode_images = lambda images: self._call("vae_encoder", backend._tensor(images, "images"))
        if "vae_decoder" in packages:
            backend.decode = lambda latents: self._call("vae_decoder", backend._tensor(latents, "latents"))
        for head in tuple(backend._run):
            name = f"dit_{head}"
            if name in packages:
                order = names[name]
                backend._run[head] = lambda _n=name, _o=order, **kw: packages[_n](*[kw[i] for i in _o])
        self._torch = torch

    def _call(self, name: str, x):
        with self._torch.inference_mode():
            return self.backend._numpy(self.packages[name](x))


def part_aoti(part: Part, cfg: Settings, work: Path) -> None:
    """Compile the default model's graphs for the device in priority order while the seconds last, then
    fuse with them through the Python pipeline: latency rows (backend ``aoti``) and PSNR against the eager
    torch pipeline on the same model, device and seed."""
    import torch

    from latentfuse.export.aoti import AOTI_MAX_BATCH, compile_graph
    from latentfuse.export.graphs import graph_specs
    from latentfuse.runtime.backends.torch_backend import TorchBackend
    from latentfuse.runtime.pipeline import Pipeline

    part.data["device"] = cfg.device
    if not cfg.aoti_graphs:
        part.data["graphs"] = []
        part.finish("skipped", f"--smoke compiles no AOTInductor package (40 s or more of C++ compile per graph "
                               f"on a CPU); {AOTI_ENV}=vae_encoder asks for one")
        return
    comp = load_model("default", "bundled")
    specs = graph_specs(comp, [h for h in MODES if h in comp.dits])
    out_dir = work / "aoti"
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs, packages = [], {}
    # the first compile's length is unknown: it may start with a third of the budget left; later ones need
    # 1.3x the slowest so far, and the pipeline check keeps a quarter of the budget
    reserve = 0.25 * part.budget_s
    slowest = 0.0
    for name in cfg.aoti_graphs:
        need = max(slowest * 1.3, part.budget_s / 3 if not slowest else 0.0)
        if part.left() - reserve < need:
            graphs.append({"graph": name, "status": "skipped", "reason":
                           f"time budget: needs about {need:.0f} s, {max(part.left() - reserve, 0):.0f} s left"})
            continue
        path = out_dir / f"{name}.pt2"
        progress(f"aoti: compiling {name} for {cfg.device} ...")
        try:
            seconds = compile_graph(specs[name], specs[name].module(comp), path, device=cfg.device)
            packages[name] = torch._inductor.aoti_load_package(str(path))
        except Exception as err:  # noqa: BLE001 - recorded per graph
            graphs.append({"graph": name, "status": "error", "reason": one_line(err)})
            progress(f"aoti: {name}: {one_line(err)}")
            continue
        slowest = max(slowest, seconds)
        graphs.append({"graph": name, "status": "ok", "compile_seconds": round(seconds, 1),
                       "package_mib": round(path.stat().st_size / 2 ** 20, 2)})
        progress(f"aoti: {name} compiled in {seconds:.0f} s")
        part.data["graphs"] = graphs
        part.save()
    part.data["graphs"] = graphs + [{"graph": "text_encoder", "status": "skipped", "reason":
                                     "not compiled: the canonical prompt comes from the prompt cache"}]
    part.save()
    if not packages:
        part.finish("error" if any(g["status"] == "error" for g in graphs) else "skipped",
                    "no package: " + "; ".join(f"{g['graph']}: {g['reason']}" for g in graphs))
        return
    eager = Pipeline.from_components(comp, device=cfg.device, dtype="float32")
    aoti_backend = TorchBackend(comp, device=cfg.device, dtype="float32", source="AOTInductor packages")
    AotiGraphs(aoti_backend, packages, specs)
    aoti_backend.max_batch_size = lambda: AOTI_MAX_BATCH  # the packages' dynamic batch bound
    aoti = Pipeline(aoti_backend)
    compare_with_eager(part, cfg, "aoti", aoti, eager, {"aoti_graphs": ", ".join(sorted(packages))})


def compare_with_eager(part: Part, cfg: Settings, backend: str, pipe, eager, extra: dict | None = None) -> None:
    """The default model (fp32) on ``pipe`` at every size and mode: latency rows for ``backend`` and the
    PSNR of its first image against the eager torch pipeline ``eager`` (same model, device, seed)."""
    configs = {(mode, s): {**_base("default", "bundled", "fp32", mode, s, cfg, backend=backend), "part": part.name,
                           **(extra or {})} for s in cfg.sizes for mode in MODES}
    part.plan(configs)
    last = 0.0
    for (mode, size), base in configs.items():
        if part.left() < max(0.05 * part.budget_s, 1.5 * last):
            part.put((mode, size), stage_rows(base, status="skipped", reason=(
                f"time budget: the last configuration took {last:.0f} s, {max(part.left(), 0):.0f} s left")))
            continue
        start = time.monotonic()
        a, b = pair_at(size)
        try:
            ref = eager(a, b, task=TASK, mode=mode, seed=SEED).image
            summary, first, measured = time_config(pipe, a, b, mode, cfg, f"{backend} {mode}")
        except Exception as err:  # noqa: BLE001 - recorded per configuration
            free_device(cfg.device)
            part.put((mode, size), stage_rows(base, status="oom" if is_oom(err) else "error", reason=one_line(err)))
            progress(f"{part.name}: {mode} {size.label}: {one_line(err)}")
            continue
        last = time.monotonic() - start
        measured["psnr_vs_eager_db"] = finite_db(psnr(first.image, ref))
        part.put((mode, size), stage_rows({**base, **measured}, summary))
        progress(f"{part.name}: {mode} {size.label}: {summary.median['total'] * 1e3:.1f} ms total, "
                 f"PSNR vs eager {measured['psnr_vs_eager_db']} dB")
    part.finish()


def part_tensorrt(part: Part, cfg: Settings, work: Path) -> None:
    """TensorRT engines of the default model when ``import tensorrt`` works; else the reason."""
    try:
        import tensorrt as trt
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken install's OSError
        part.data["import_tensorrt"] = one_line(err)
        part.finish("skipped", f"import tensorrt failed: {one_line(err)}")
        return
    from latentfuse.runtime.backends.tensorrt_backend import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        part.data["import_tensorrt"] = "ok"
        part.finish("skipped", reason)
        return
    part.data["import_tensorrt"] = "ok"
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.engines import build_bundle_engines
    from latentfuse.model.components import DEFAULT_MODEL_DIR
    from latentfuse.runtime.pipeline import Pipeline

    part.data["tensorrt"] = trt.__version__
    bundle = work / "trt_bundle"
    t0 = time.monotonic()
    export_bundle(DEFAULT_MODEL_DIR, bundle, force=True, lint=False, progress=False, on_report=lambda r: None)
    jobs = build_bundle_engines(bundle, progress=False)
    part.data["build_seconds"] = round(time.monotonic() - t0, 1)
    part.data["engines"] = [{k: j.get(k) for k in ("graph", "precision", "status")} for j in jobs]
    part.save()
    pipe = Pipeline.from_bundle(bundle, backend="tensorrt")
    eager = Pipeline.from_checkpoint(DEFAULT_MODEL_DIR, device=cfg.device)
    compare_with_eager(part, cfg, "tensorrt", pipe, eager)


def part_cpp(part: Part, cfg: Settings, work: Path, repo: Path) -> None:
    """Configure the C++ host against this machine's libtorch (seconds); build it, export CPU AOTInductor
    packages (the host runs CPU packages only) and compare its image with the Python pipeline only when
    the seconds left cover it."""
    import torch

    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        part.finish("skipped", f"no {' or '.join(missing)} on this machine")
        return
    build = work / "cpp-build"
    configure = ["cmake", "-S", str(repo / "runtime" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    ok, text = _run(configure, timeout=max(10.0, min(120.0, part.left())))
    part.data["configure"] = "ok" if ok else text
    if not ok:
        part.finish("skipped", f"cmake configure failed: {text}")
        return
    # measured on two CPU cores: the host build takes minutes (libtorch headers), and the AOTInductor
    # export of a 4-graph model about 40 s per graph; on 16 cores about a quarter of that
    need = 240.0 if (os.cpu_count() or 2) >= 8 else 900.0
    if part.left() < need:
        part.finish("skipped", f"time budget: building the host and exporting its CPU packages needs about "
                               f"{need:.0f} s, {max(part.left(), 0):.0f} s left (configure ok)")
        return
    ok, text = _run(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2)], timeout=part.left() - 60)
    if not ok:
        part.finish("error", f"cmake --build failed: {text}")
        return
    host = build / "latentfuse-host"
    from latentfuse.export.aoti import export_aoti_bundle
    from latentfuse.model.data.samples import sample_pairs
    from latentfuse.runtime.pipeline import Pipeline

    comp = load_model("default", "bundled")
    bundle = export_aoti_bundle(comp, work / "cpp_bundle", heads=["regression"], force=True, device="cpu", progress=False)
    pair = sample_pairs(TASK)[0]
    out_png = work / "cpp_fused.png"
    ok, text = _run([str(host), str(pair.a), str(pair.b), "--task", TASK, "--bundle", str(bundle), "--backend", "aoti",
                     "--mode", "regression", "--seed", str(SEED), "--runs", "1", "-o", str(out_png)],
                    timeout=max(10.0, part.left()))
    if not ok:
        part.finish("error", f"latentfuse-host failed: {text}")
        return
    from latentfuse.model.image_io import read_image

    ref = Pipeline.from_components(comp, device="cpu")(pair.a, pair.b, task=TASK, mode="regression", seed=SEED).image
    part.data["psnr_vs_python_db"] = finite_db(psnr(read_image(out_png), ref))
    part.data["host_output"] = text
    part.finish()


def _run(cmd: Sequence[str], timeout: float) -> tuple[bool, str]:
    """(succeeded, the most telling line of its output: the first CMake error / 'Could NOT find', else the last)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"{Path(cmd[0]).name} ran past {timeout:.0f} s"
    except OSError as err:
        return False, one_line(err)
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode == 0:
        return True, lines[-1] if lines else ""
    telling = [ln for ln in lines if re.search(r"CMake Error|Could NOT find|error:|Error", ln)]
    detail = [ln for ln in lines if re.search(r"Could not find|not found|NOTFOUND|No such file", ln, re.I)]
    pick = (detail or telling or lines or [f"exit {proc.returncode}"])[0]
    return False, f"exit {proc.returncode}: {pick[:300]}"


# ------------------------------------------------------------------------------------ report


def assemble(work: Path, out: Path, budget_s: float | None = None, started: float | None = None) -> dict:
    """Merge the parts' records (and the shell's exit codes / install record) into
    ``device_check.json`` and ``device_check.md`` under ``out``, atomically."""
    parts, rows = {}, []
    smoke = False
    for name in PARTS:
        path = work / f"{name}.json"
        if not path.is_file():
            parts[name] = {"status": "not run", "reason": "the run ended before this part"}
            continue
        data = json.loads(path.read_text())
        smoke = smoke or bool(data.get("smoke"))
        rc_file = work / f"{name}.rc"
        rc = int(rc_file.read_text().strip()) if rc_file.is_file() and rc_file.read_text().strip() else None
        if data.get("status") == "running":
            data["status"] = "timeout" if rc in (124, 137) else "failed"
            data["reason"] = (f"killed at its time limit (it planned for {data.get('budget_s')} s); rows up to "
                              f"then are kept"
                              if rc in (124, 137) else f"the part's process ended (exit {rc}) before finishing; "
                                                       f"see device_check.log")
        for row in data.get("rows", []):
            if row.get("status") == "pending":  # planned, never reached
                row["status"] = data["status"] if data["status"] in ("timeout", "failed") else "not run"
                row["reason"] = f"the {name} part ended ({data['status']}) before this configuration"
        rows += data.pop("rows", [])
        parts[name] = data
    install = json.loads((work / "install.json").read_text()) if (work / "install.json").is_file() else None
    machine = parts.get("machine", {})
    report = {
        "schema": SCHEMA, "created": now_iso(), "smoke": smoke,
        "status": "complete" if all(p.get("status") in ("ok", "skipped") for p in parts.values()) else "partial",
        "budget_s": budget_s, "elapsed_s": round(time.time() - started, 1) if started else None,
        "machine": machine.get("machine"), "versions": machine.get("versions"), "install": install,
        "paper": PAPER,
        "parts": {n: {k: v for k, v in p.items() if k not in ("machine", "versions")} for n, p in parts.items()},
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "device_check.json", report)
    with atomic_file(out / "device_check.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def _ms(v) -> str:
    return "—" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:,.0f}")


def markdown(report: dict) -> str:
    m = report.get("machine") or {}
    gpu = m.get("gpu") or {}
    v = report.get("versions") or {}
    lines = [f"# latentfuse device check{' (smoke, CPU)' if report['smoke'] else ''}", "",
             f"{report['created']}, status **{report['status']}**, {report.get('elapsed_s')} s of a "
             f"{report.get('budget_s')} s budget.", "",
             f"- machine: {gpu.get('name') or 'no GPU'}"
             + (f" (SM {gpu.get('capability')}, {gpu.get('memory_gib')} GiB, driver {gpu.get('driver', '?')})" if gpu else "")
             + f", {m.get('cpu_count', '?')} CPU cores, {m.get('platform', '?')}",
             f"- torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}) from {m.get('torch_file', '?')}; "
             f"latentfuse {v.get('latentfuse')} from {m.get('latentfuse_file', '?')} (commit {m.get('commit', '?')})",
             f"- matmul peak: " + ", ".join(f"{k} {t} TFLOP/s" for k, t in (m.get("matmul_peak_tflops") or {}).items()),
             "", "## Parts", "", "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, p in report["parts"].items():
        lines.append(f"| {name} | {p.get('status')} | {p.get('seconds', '—')} | {p.get('reason') or ''} |")
    rows = report["rows"]
    totals = [r for r in rows if r["stage"] == "total"]
    table5 = [r for r in totals if r.get("role") == "table5"]
    if table5:
        paper = {p["mode"]: p for p in report["paper"]["rows"] if p["mode"]}
        lines += ["", f"## MMAIF Table 5's form: whole pipeline at {table5[0]['size']}", "",
                  f"Paper ({report['paper']['source']}, GPU {report['paper']['gpu']}): "
                  + ", ".join(f"{p['method']} {p['bound'] if p['bound'] != '=' else ''}{p['seconds']:.3g} s"
                              for p in report["paper"]["rows"]) + ".", "",
                  "| model | backend | precision | mode | s / image | paper | measured / paper |", "|---|---|---|---|---:|---:|---:|"]
        for r in table5:
            p = paper.get(r["mode"])
            s = None if r["median_ms"] is None else r["median_ms"] / 1e3
            ref = f"{p['bound'] if p['bound'] != '=' else ''}{p['seconds']:.3g} s" if p else "—"
            ratio = f"{s / p['seconds']:.2f}x" if p and s else (r["status"] if s is None else "—")
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['mode']} | "
                         f"{'—' if s is None else f'{s:.3f}'} | {ref} | {ratio} |")
    if rows:
        lines += ["", "## Per-stage medians (ms)", "",
                  "| model | backend | precision | mode | size | " + " | ".join(STAGE_NAMES) + " | peak MiB | note |",
                  "|---|---|---|---|---|" + "---:|" * (len(STAGE_NAMES) + 1) + "---|"]
        groups: dict[tuple, dict] = {}
        for r in rows:
            key = (r["part"], r["model"], r["backend"], r["precision"], r["mode"], r["size"])
            groups.setdefault(key, {})[r["stage"]] = r
        for (_, model, backend, precision, mode, size), g in groups.items():
            any_row = next(iter(g.values()))
            note = any_row["status"] if any_row["status"] != "ok" else ""
            if any_row.get("reason"):
                note += f": {any_row['reason']}"
            if any_row.get("psnr_vs_eager_db") is not None:
                note += f"PSNR vs eager {any_row['psnr_vs_eager_db']} dB"
            if any_row.get("finite") is False:
                note += " non-finite output"
            lines.append(f"| {model} | {backend} | {precision} | {mode} | {size} | "
                         + " | ".join(_ms(g.get(s, {}).get("median_ms")) for s in STAGE_NAMES)
                         + f" | {_ms(any_row.get('peak_mem_mib'))} | {note.strip()} |")
    aoti = report["parts"].get("aoti", {})
    if aoti.get("graphs"):
        lines += ["", "## AOTInductor packages", "", "| graph | status | compile s | note |", "|---|---|---:|---|"]
        lines += [f"| {g['graph']} | {g['status']} | {g.get('compile_seconds', '—')} | {g.get('reason') or ''} |"
                  for g in aoti["graphs"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentfuse.bench.device_check",
                                     description="One part of bench/device_check.sh (see the module docstring).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("part")
    p.add_argument("name", choices=PARTS)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--budget", required=True, type=float)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    s = sub.add_parser("skip")
    s.add_argument("name", choices=PARTS)
    s.add_argument("--work", required=True, type=Path)
    s.add_argument("--reason", required=True)
    s.add_argument("--smoke", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--budget", type=float)
    r.add_argument("--started", type=float, help="the run's start, seconds since the epoch")
    args = parser.parse_args(argv)

    if args.command == "report":
        report = assemble(args.work, args.out, args.budget, args.started)
        ok = sum(1 for row in report["rows"] if row["status"] == "ok" and row["stage"] == "total")
        progress(f"report: {args.out / 'device_check.json'} ({report['status']}, {ok} timed configurations)")
        return 0
    if args.command == "skip":
        part = Part(args.name, args.work, 0.0, args.smoke)
        part.finish("skipped", args.reason)
        return 0
    if args.budget <= 0:
        parser.error(f"--budget must be positive seconds, got {args.budget:g}")
    try:
        cfg = settings(args.smoke)
    except ValueError as err:
        parser.error(str(err))
    part = Part(args.name, args.work, args.budget, args.smoke)
    progress(f"{args.name}: start ({args.budget:.0f} s budget, device {cfg.device})")
    runners: dict[str, Callable[[], None]] = {
        "machine": lambda: part_machine(part, cfg),
        "latency": lambda: part_latency(part, cfg),
        "aoti": lambda: part_aoti(part, cfg, args.work),
        "tensorrt": lambda: part_tensorrt(part, cfg, args.work),
        "cpp": lambda: part_cpp(part, cfg, args.work, args.repo),
    }
    try:
        runners[args.name]()
    except Exception as err:  # noqa: BLE001 - the part's record says why it stopped
        traceback.print_exc()
        part.finish("error", one_line(err))
        progress(f"{args.name}: error: {one_line(err)}")
        return 1
    progress(f"{args.name}: {part.data['status']} in {part.data['seconds']:.0f} s"
             + (f" ({part.data['reason']})" if part.data.get("reason") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
