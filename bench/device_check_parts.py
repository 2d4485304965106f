"""The parts of the device check (:mod:`latentfuse.bench.device_check`): machine, latency, aoti, tensorrt,
cpp; each fills its :class:`~latentfuse.bench.device_check_record.Part`."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from latentfuse.bench.device_check_record import (AOTI_ENV, DIT_DTYPES, MODES, SEED, TASK, Part, Settings, Size,
                                                  one_line, progress, stage_rows)


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
    pipe = Pipeline.from_pretrained(bundle, backend="tensorrt")
    eager = Pipeline.from_pretrained(DEFAULT_MODEL_DIR, device=cfg.device)
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
