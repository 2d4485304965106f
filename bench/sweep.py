"""The latency sweep: every pipeline (latent and pixel-space) at every resolution, aspect ratio,
backend and precision, in one run (MMAIF 4.6.4 / Table 5, measured on this machine).

For each image size the sweep first computes every pipeline's analytic cost (:mod:`bench.flops`) and
drops nothing: a pipeline whose estimated peak memory exceeds the budget is recorded as
``infeasible`` (with its FLOPs), one that runs out of memory as ``oom``, one that cannot run in a
setting as ``unavailable``. The rest run ``warmup`` untimed calls each, then ``repeat`` timed rounds;
each round visits every pipeline once (round-robin, the start rotating by one per round), so slow
drifts of the machine (thermal, other load) hit all pipelines alike instead of whichever ran last.

Per pipeline and size: median and inter-quartile range / min / max of the total and of every stage,
peak memory (:mod:`bench.memory`), achieved FLOP/s per stage as a fraction of the measured matmul
peak. Per pipeline over sizes: the fitted exponent k of latency ∝ pixels^k. Per size: the speed-up of
each latent pipeline over the fastest pixel-space pipeline of the same precision.

Several presets run in one sweep (``presets=("tiny", "paper")``): the latent pipelines and their
parameter-matched pixel-space DiTs are built per preset, NAFNet+DenseFuse (which has no preset) once;
every size interleaves all of them, every row carries its ``preset`` (``"any"`` for the
preset-independent ones, which every preset's speed-ups use). Sizes run in ascending pixel order.

With ``time_budget_s`` the warm-up and repeat counts become upper bounds: before each size
:mod:`bench.budget` projects every remaining call and fits them into the seconds left (coverage
first, presets in the order given), so a pipeline may get fewer calls, or none (``over-budget``).
The clock starts when :func:`run_sweep` is called (model building and the analytic pass count).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from bench.budget import (FIRST_CALL_EFFICIENCY, WARMUP_SKIP_S, Call, Projection, plan_calls, project_from_rate,
                          project_own)
from bench.flops import fit_exponent, matmul_peak_flops
from bench.memory import PeakMemory, available_bytes
from bench.pipelines import BenchPipeline, Unavailable, latent_variants
from model.errors import LatentfuseError

PRECISIONS = ("fp32", "fp16", "int8")   # int8: an explicit Q/DQ bundle (export.quantize) on onnxruntime / tensorrt
BACKENDS = ("torch", "onnxruntime", "tensorrt")
WEIGHTS_NOTE = ("random weights: latency, FLOPs and memory depend on the architectures and sizes only, "
                "not on trained values")
#: The ``preset`` of a row whose pipeline has no preset (timed once per size, compared with every preset).
ANY_PRESET = "any"
#: Pipelines that do not depend on the model preset.
PRESET_INDEPENDENT = ("nafnet+densefuse",)
PLANNER_NOTE = ("time budget: before each size every remaining (size, pipeline) call is projected and the "
                "seconds left are filled in levels, presets in the order given and cheapest call first: one "
                "timed call each, then a second (a spread), then the remaining repeats, then warm-up; the "
                "current size runs its part, the rest is the reserve for the later sizes; re-planned before "
                "each size, before each first call at a size and after its first round; a call that gets no "
                "seconds is reported over-budget; the budget is soft (a running call is never interrupted)")
WARMUP_NOTE = (f"on CPU the first call at a shape is not special (no autotuning or engine build), so under a "
               f"time budget a call projected over {WARMUP_SKIP_S:g} s gets no warm-up")

_clock = time.perf_counter  # the sweep's clock (tests replace it)


@dataclass
class SweepConfig:
    resolutions: tuple[int, ...] = (256, 512, 768, 1024)
    aspects: tuple[str, ...] = ("1:1",)
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    preset: str = "tiny"                    # the single preset; ``presets`` wins when given
    presets: tuple[str, ...] | None = None  # several presets in one sweep (time budget shared in this order)
    repeat: int = 3
    warmup: int = 1
    device: str | None = None               # torch device; default cuda when available
    checkpoint: str | None = None           # model directory for the latent torch pipelines (else random preset)
    bundle: str | None = None               # fp32 deployment bundle for onnxruntime / tensorrt
    bundle_fp16: str | None = None          # fp16 deployment bundle
    bundle_int8: str | None = None          # int8 deployment bundle (latentfuse export --precision int8)
    export_dir: str | None = None           # export the benchmarked model here when a bundle is needed and none given
    memory_budget_gb: float | None = None   # None: the device's memory (GPU total / host MemAvailable)
    pipelines: tuple[str, ...] | None = None  # restrict to these names
    flow_steps: int = 5
    euler_steps: int = 25
    pixel_patch: int = 8
    threads: int | None = None
    peak_matmul_n: int = 2048               # side of the matmul that measures the machine's peak
    analytic_only: bool = False             # parameters, FLOPs and memory estimates only; time nothing
    # The meta-tensor activation estimate ignores allocator slack and host-side copies; measured peaks
    # on CPU ran up to ~1.5x it, so the feasibility check scales the activations by this factor.
    memory_headroom: float = 1.5
    time_budget_s: float | None = None      # None: unlimited (every call as configured)
    progress: bool = True

    def __post_init__(self):
        problems = []
        if self.presets is None:
            self.presets = (self.preset,)
        self.presets = tuple(str(p).strip() for p in self.presets)
        if not self.presets or len(set(self.presets)) != len(self.presets) or not all(self.presets):
            problems.append(f"presets must be distinct non-empty names, got {self.presets}")
        else:
            self.preset = self.presets[0]
        if self.checkpoint and len(self.presets) > 1:
            problems.append(f"--checkpoint gives one model; it cannot be combined with several presets "
                            f"({', '.join(self.presets)})")
        if (self.bundle or self.bundle_fp16 or self.bundle_int8) and len(self.presets) > 1:
            problems.append("--bundle / --bundle-fp16 / --bundle-int8 hold one model; with several presets use "
                            "--export-bundle")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            problems.append(f"time budget must be > 0 s, got {self.time_budget_s}")
        if not self.resolutions or any(int(r) < 16 for r in self.resolutions):
            problems.append(f"resolutions must be >= 16 px, got {self.resolutions}")
        for a in self.aspects:
            parse_aspect(a)
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            problems.append(f"unknown backend(s) {bad}: choose from {', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            problems.append(f"unknown precision(s) {bad}: choose from {', '.join(PRECISIONS)}")
        if self.repeat < 1 or self.warmup < 0:
            problems.append(f"repeat must be >= 1 and warmup >= 0, got {self.repeat} / {self.warmup}")
        if self.flow_steps < 1 or self.euler_steps < 1:
            problems.append("flow_steps and euler_steps must be >= 1")
        if problems:
            raise LatentfuseError("invalid bench settings: " + "; ".join(problems))


def parse_aspect(text: str) -> tuple[int, int]:
    """"16:9" -> (16, 9) (width : height)."""
    try:
        w, h = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise LatentfuseError(f"aspect ratio must look like 16:9, got {text!r}") from None
    if w < 1 or h < 1:
        raise LatentfuseError(f"aspect ratio sides must be positive, got {text!r}")
    return w, h


def image_size(resolution: int, aspect: str) -> tuple[int, int]:
    """(height, width) with the long side = ``resolution``, the other from the aspect ratio, both
    rounded to a multiple of 16 (the latent pipeline's grid, so no pipeline pays for padding)."""
    aw, ah = parse_aspect(aspect)
    long_side = max(16, int(resolution / 16 + 0.5) * 16)
    short = max(16, int(long_side * min(aw, ah) / max(aw, ah) / 16 + 0.5) * 16)
    return (short, long_side) if aw >= ah else (long_side, short)


# ---------------------------------------------------------------------------- building


def load_components(cfg: SweepConfig):
    from model.components import FusionComponents

    if cfg.checkpoint:
        return FusionComponents.from_pretrained(cfg.checkpoint), "checkpoint " + str(cfg.checkpoint)
    return FusionComponents.from_preset(cfg.preset), "random"


def pipeline_names(cfg: SweepConfig) -> tuple[str, ...]:
    """Every pipeline name with these step counts: the latent ones, then the pixel-space ones."""
    return tuple(latent_variants(cfg.flow_steps, cfg.euler_steps)) + (
        "nafnet+densefuse", "pixel-dit-reg", f"pixel-dit-flow-reuse{cfg.flow_steps}")


def is_preset_independent(p) -> bool:
    return bool(getattr(p, "preset_independent", False)) or p.name in PRESET_INDEPENDENT


def build_pipelines(cfg: SweepConfig, components, device: torch.device) -> list[Any]:
    """Every (backend, precision) × pipeline: a BenchPipeline, or an Unavailable saying why."""
    from bench.competitors import pixel_pipelines
    from bench.pipelines import bundle_latent_pipelines, torch_latent_pipelines

    variants = {n: v for n, v in latent_variants(cfg.flow_steps, cfg.euler_steps).items()
                if cfg.pipelines is None or n in cfg.pipelines}
    latent = tuple(variants)
    known = pipeline_names(cfg)
    pixel = known[len(latent_variants(cfg.flow_steps, cfg.euler_steps)):]
    unknown = sorted(set(cfg.pipelines or ()) - set(known))
    if unknown:
        raise LatentfuseError(f"unknown pipeline(s) {', '.join(unknown)}; with these step counts the pipelines "
                              f"are: {', '.join(known)}")
    wanted = lambda n: cfg.pipelines is None or n in cfg.pipelines  # noqa: E731
    out: list[Any] = []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            tag = dict(backend=backend, precision=precision)

            def unavailable(names, space, reason):
                for n in names:
                    if wanted(n):
                        u = Unavailable(n, space, reason)
                        u.__dict__.update(tag)
                        out.append(u)

            if precision == "fp16" and device.type != "cuda" and backend == "torch":
                reason = f"fp16 needs a CUDA device (this run is on {device.type}; CPU half kernels are not a deployment path)"
                unavailable(latent, "latent", reason)
                unavailable(pixel, "pixel", reason)
                continue
            if precision == "int8" and backend == "torch":
                reason = ("int8 is an explicit Q/DQ deployment bundle (export.quantize): it runs on --backends "
                          "onnxruntime / tensorrt; the torch backend has no int8 path")
                unavailable(latent, "latent", reason)
                unavailable(pixel, "pixel", reason)
                continue
            if backend == "torch":
                out += torch_latent_pipelines(components, precision, device, variants)
                out += pixel_pipelines(components, precision, device, cfg.pixel_patch, cfg.flow_steps,
                                       names=tuple(n for n in pixel if wanted(n)))
                continue
            bundle = {"fp16": cfg.bundle_fp16, "int8": cfg.bundle_int8}.get(precision, cfg.bundle)
            flag = {"fp16": "--bundle-fp16", "int8": "--bundle-int8"}.get(precision, "--bundle")
            if bundle is None and cfg.export_dir is not None:
                try:
                    bundle = _exported_bundle(cfg, components, precision)
                except Exception as err:
                    unavailable(latent, "latent", f"not available: exporting a {precision} bundle failed: "
                                                  f"{type(err).__name__}: {err}")
                    continue
            if bundle is None:
                unavailable(latent, "latent", f"not available: the {backend} backend needs an exported "
                                              f"{precision} deployment bundle ({flag} DIR, or --export-bundle)")
            else:
                try:
                    pipes = bundle_latent_pipelines(bundle, backend, components, precision, device, variants,
                                                    threads=cfg.threads)
                except Exception as err:  # missing dependency, engines not built, bad bundle: report, go on
                    unavailable(latent, "latent", f"not available: {type(err).__name__}: {err}")
                else:
                    for p in pipes:
                        if isinstance(p, Unavailable):
                            p.__dict__.update(tag)
                    out += pipes
    return out


_EXPORTED: dict[tuple[str, str], str] = {}


def _exported_bundle(cfg: SweepConfig, components, precision: str) -> str:
    """Export the benchmarked components once per precision into ``cfg.export_dir`` (export.bundle)."""
    from pathlib import Path

    from export.bundle import export_bundle

    out = Path(cfg.export_dir) / (f"bundle-{precision}" if cfg.checkpoint else f"bundle-{cfg.preset}-{precision}")
    key = (str(out), precision)
    if key not in _EXPORTED:
        if not (out / "manifest.json").is_file():
            quantization = None
            if precision == "int8":
                from export.quantize import QuantOptions

                # tuned for the backend it is timed on: TensorRT, else ONNX Runtime's CPU kernels
                quantization = QuantOptions(precision="int8",
                                            target="tensorrt" if "tensorrt" in cfg.backends else "onnxruntime")
            export_bundle(cfg.checkpoint or out, out, precision=precision, components=components,
                          progress=cfg.progress, force=True, quantization=quantization)
        _EXPORTED[key] = str(out)
    return _EXPORTED[key]


# ---------------------------------------------------------------------------- measuring


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(err).lower()


def _quantile(xs: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs, dtype=np.float64), q))


def _summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = list(runs[0])
    out = {}
    for k in keys:
        xs = [r.get(k, 0.0) for r in runs]
        out[k] = {"median": statistics.median(xs), "q25": _quantile(xs, 0.25), "q75": _quantile(xs, 0.75),
                  "min": min(xs), "max": max(xs)}
    return out


def _pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random source pair (content does not change the cost of these networks)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.random((height, width, 3), dtype=np.float32) for _ in range(2))  # type: ignore[return-value]


def _row(p, resolution: int, aspect: str, height: int, width: int) -> dict:
    return {"pipeline": p.name, "preset": getattr(p, "preset", ANY_PRESET), "space": p.space,
            "backend": p.backend, "precision": p.precision, "resolution": resolution, "aspect": aspect,
            "height": height, "width": width, "pixels": height * width, "nfe": getattr(p, "nfe", None),
            "status": "ok", "reason": ""}


def _load_all(cfg: SweepConfig, device: torch.device) -> tuple[list[Any], str]:
    """Pipelines of every preset, each tagged with ``.preset``; the preset-independent ones (no preset,
    :data:`PRESET_INDEPENDENT`) are built with the first preset only and tagged :data:`ANY_PRESET`."""
    pipelines: list[Any] = []
    weights = "random"
    for i, preset in enumerate(cfg.presets):
        sub = replace(cfg, preset=preset, presets=(preset,))
        if i > 0:
            sub.pipelines = tuple(n for n in pipeline_names(cfg) if n not in PRESET_INDEPENDENT
                                  and (cfg.pipelines is None or n in cfg.pipelines))
            if not sub.pipelines:
                continue
        components, weights = load_components(sub)
        for p in build_pipelines(sub, components, device):
            if is_preset_independent(p):
                if i > 0:
                    continue
                p.preset = ANY_PRESET
            else:
                p.preset = preset
            pipelines.append(p)
    return pipelines, weights


def _over_budget(row: dict, seconds: float, free_s: float, left_s: float) -> None:
    reason = f"projected {seconds:.1f} s per call, {max(free_s, 0.0):.0f} s of the budget left"
    if left_s - free_s > 1.0:
        reason += f" for it ({max(left_s, 0.0):.0f} s left in all, the rest planned for cheaper calls first)"
    row.update(status="over-budget", reason=reason)


def run_sweep(cfg: SweepConfig) -> dict:
    """Run the sweep; returns the JSON-ready result (see :mod:`bench.report` for the files)."""
    from tqdm.auto import tqdm

    from bench.budget import Allotment

    start = _clock()
    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LatentfuseError("--device cuda was asked for but torch sees no CUDA GPU")
        pipelines, weights = _load_all(cfg, device)
        # a reference per (preset, name) (any backend / precision) gives the FLOPs of unavailable rows
        reference = {(p.preset, p.name): p for p in pipelines if isinstance(p, BenchPipeline)}
        # An explicit budget bounds each pipeline's estimated peak (weights + activations). Without one,
        # every model is already loaded, so a pipeline fits if its activations fit in the free memory.
        explicit = cfg.memory_budget_gb is not None
        budget = int(cfg.memory_budget_gb * 2 ** 30) if explicit else available_bytes(device)
        peaks = {}
        for precision in () if cfg.analytic_only else cfg.precisions:
            if (precision == "fp16" and device.type != "cuda") or precision == "int8":
                continue  # int8: integer kernels have no float matmul peak to be a fraction of
            peaks[precision] = matmul_peak_flops(device, torch.float16 if precision == "fp16" else torch.float32,
                                                 n=cfg.peak_matmul_n)

        # ascending pixels: what a size costs is projected from the smaller sizes already measured
        shapes = sorted(((r, a, *image_size(r, a)) for a in cfg.aspects for r in cfg.resolutions),
                        key=lambda s: s[2] * s[3])
        rows: list[dict] = []
        plan: list[tuple[tuple, list[tuple[BenchPipeline, dict]]]] = []
        for shape in tqdm(shapes, desc="analytic cost", disable=not cfg.progress, leave=False):
            res, aspect, h, w = shape
            runnable = []
            for p in pipelines:
                row = _row(p, res, aspect, h, w)
                limit = None
                ref = p if isinstance(p, BenchPipeline) else reference.get((p.preset, p.name))
                if ref is not None:
                    an = ref.analytic(h, w)
                    row.update(flops=an.flops, total_flops=an.total_flops, flops_method=an.method,
                               est_peak_bytes=an.peak_bytes if ref is p else None)
                    limit = None if budget is None else (budget if explicit else budget + an.weight_bytes)
                    if row["nfe"] is None:
                        row["nfe"] = ref.nfe
                if isinstance(p, Unavailable):
                    row.update(status="unavailable", reason=p.reason)
                elif cfg.analytic_only:
                    row.update(status="analytic", reason="analytic only: not timed")
                elif limit is not None and an.weight_bytes + cfg.memory_headroom * (an.peak_bytes - an.weight_bytes) > limit:
                    row.update(status="infeasible", reason=(
                        f"estimated peak {row['est_peak_bytes'] / 2**30:.2f} GiB (activations x{cfg.memory_headroom:g} "
                        f"headroom) exceeds the memory budget "
                        f"{limit / 2**30:.2f} GiB" + ("" if explicit else " (free memory + its weights)")))
                else:
                    runnable.append((p, row))
                rows.append(row)
            plan.append((shape, runnable))

        budget_s = cfg.time_budget_s
        measured: dict[tuple, list[tuple[int, int, float]]] = {}  # (preset, name, backend, precision) -> points
        priority = {ANY_PRESET: 0, **{pr: i for i, pr in enumerate(cfg.presets)}}

        def ident(p) -> tuple:
            return (p.preset, p.name, p.backend, p.precision)

        def project(p, row, extra: dict) -> Projection:
            """``extra``: ident -> (pixels, flops, seconds) of the first calls at the current size."""
            points = {k: list(v) for k, v in measured.items()}
            for k, pt in extra.items():
                points.setdefault(k, []).append(pt)
            own = project_own(points.get(ident(p), []), row["pixels"], row.get("total_flops"))
            if own is not None:
                return own
            # Nothing of its own yet. Other pipelines' achieved FLOP/s do not carry over (a tiny model
            # reaches ~1% of the peak on CPU, a paper-size one ~20%); a guess is only used until its
            # first call at the smallest size, and the plan is redone after every such call.
            peak = peaks.get(p.precision) or max(peaks.values(), default=1e10)
            return project_from_rate(row.get("total_flops"), FIRST_CALL_EFFICIENCY * peak,
                                     f"{FIRST_CALL_EFFICIENCY:.0%} of the matmul peak: nothing measured yet")

        def make_plan(si: int, current: list, first: dict | None = None):
            """Allotments for the sizes si.. (``current``: size si's (pipeline, row) pairs still to plan);
            ``first``: id(p) -> (ident, point, timed calls made) once size si's first round ran."""
            first = first or {}
            extra = {k: pt for k, pt, _ in first.values()}
            proj, calls = {}, []
            for sj in range(si, len(plan)):
                for p, row in (current if sj == si else plan[sj][1]):
                    key = (sj, id(p))
                    if sj == si and id(p) in first:
                        proj[key] = Projection(first[id(p)][1][2], "its first call at this size")
                    else:
                        proj[key] = project(p, row, extra)
                    done = first[id(p)][2] if sj == si and id(p) in first else 0
                    guess = ident(p) not in measured and not (sj == si and id(p) in first)
                    calls.append(Call(key, priority.get(p.preset, 0), proj[key].seconds, done=done, guess=guess))
            left = budget_s - (_clock() - start)
            plans = plan_calls(calls, left, cfg.repeat, cfg.warmup, skip_slow_warmup=device.type == "cpu")
            # the seconds planned for the later sizes are their reserve: this size may not eat them
            reserve = sum(a.cost(proj[k].seconds) for k, a in plans.items() if k[0] > si)
            bar.total = bar.n + sum(a.warmup + a.calls - (first[k[1]][2] if k[0] == si and k[1] in first else 0)
                                    for k, a in plans.items())
            return plans, proj, left, start + budget_s - reserve

        total_calls = sum(len(run) * (cfg.warmup + cfg.repeat) for _, run in plan)
        bar = tqdm(total=total_calls, desc="bench", unit="call", disable=not cfg.progress)
        for si, ((res, aspect, h, w), runnable) in enumerate(plan):
            deadline = hard_deadline = None
            if budget_s is None:
                allot = {id(p): Allotment(cfg.warmup, cfg.repeat) for p, _ in runnable}
            else:
                plans, proj, left, deadline = make_plan(si, runnable)
                hard_deadline = start + budget_s
                allot = {id(p): plans[(si, id(p))] for p, _ in runnable}
                for p, row in runnable:
                    pr, al = proj[(si, id(p))], allot[id(p)]
                    row.update(projected_s=pr.seconds, projection_method=pr.method,
                               planned_warmup=al.warmup, planned_calls=al.calls)
                    if not al.calls:
                        _over_budget(row, pr.seconds, al.free_s, left)
                runnable = [(p, row) for p, row in runnable if allot[id(p)].calls]
            a, b = _pair(h, w)
            est: dict[int, float] = {}  # seconds of one call: the last one at this size, else the projection

            def in_time(p, limit) -> bool:
                return limit is None or _clock() + est[id(p)] <= limit

            def timed(p):
                t0 = _clock()
                with PeakMemory(device) as mem:
                    times = p.run()
                est[id(p)] = _clock() - t0
                return times, mem

            postfix = f"{w}x{h}"
            if budget_s is not None:
                postfix += f", budget left {max(0.0, hard_deadline - _clock()) / 60:.1f} min"
            bar.set_postfix_str(postfix)
            alive = []
            for p, row in runnable:
                al = allot[id(p)]
                est[id(p)] = row.get("projected_s", 0.0)
                row["warmup_calls"] = 0
                p.setup(a, b)
                try:
                    for _ in range(al.warmup):
                        if in_time(p, deadline):
                            _times, mem = timed(p)
                            _record_memory(row, p, mem, device)
                            row["warmup_calls"] += 1
                        bar.update(1)
                    alive.append((p, row, []))
                except Exception as err:
                    _fail(row, err, device)
                    bar.update(al.warmup - row["warmup_calls"] + al.calls)
            def firsts() -> dict:
                return {id(p): (ident(p), (row["pixels"], row.get("total_flops") or 0,
                                           statistics.median(t["total"] for t in runs)), len(runs))
                        for p, row, runs in alive if row["status"] == "ok" and runs}

            r = 0
            while r < max((allot[id(p)].calls for p, _ in runnable), default=0):
                if r == 1 and budget_s is not None:
                    # every pipeline made its first timed call at this size: re-plan the repeats with them
                    first = firsts()
                    plans, proj, _, deadline = make_plan(si, [(p, row) for p, row, _ in alive if id(p) in first], first)
                    for p, row, _ in alive:
                        if id(p) in first:
                            allot[id(p)] = Allotment(allot[id(p)].warmup, plans[(si, id(p))].calls)
                            row["planned_calls"] = allot[id(p)].calls
                order = alive[r % len(alive):] + alive[: r % len(alive)] if alive else []
                for p, row, runs in order:
                    if allot[id(p)].calls <= r:
                        continue
                    if row["status"] != "ok":
                        bar.update(1)
                        continue
                    if r == 0 and budget_s is not None and not runs:
                        # re-plan before each first call with what this size measured so far: a guessed
                        # projection of the calls before it does not spend the seconds of the presets after
                        plans, proj, left_now, deadline = make_plan(
                            si, [(q, qrow) for q, qrow, _ in alive if qrow["status"] == "ok"], firsts())
                        pr, al = proj[(si, id(p))], plans[(si, id(p))]
                        row.update(projected_s=pr.seconds, projection_method=pr.method)
                        if not row["warmup_calls"]:
                            est[id(p)] = pr.seconds
                        if not al.calls:
                            _over_budget(row, pr.seconds, al.free_s, left_now)
                            bar.update(1)
                            continue
                    # a repeat may not eat the later sizes' reserve; a first timed call only the budget's end
                    if not in_time(p, deadline if runs else hard_deadline):
                        if not runs:
                            _over_budget(row, est[id(p)], hard_deadline - _clock(), hard_deadline - _clock())
                        bar.update(1)
                        continue
                    try:
                        times, mem = timed(p)
                        runs.append(times)
                        _record_memory(row, p, mem, device)
                    except Exception as err:
                        _fail(row, err, device)
                    bar.update(1)
                r += 1
            for p, row, runs in alive:
                row["timed_calls"] = len(runs)
                if row["status"] == "ok" and runs:
                    # the torch matmul peak is the ceiling of torch on this device; an ONNX Runtime session
                    # next to a GPU may run on another device (its execution provider), so no fraction there
                    same_device = p.backend == "torch" or device.type == "cpu"
                    _finish_row(row, runs, peaks.get(p.precision) if same_device else None)
                    measured.setdefault(ident(p), []).append(
                        (row["pixels"], row.get("total_flops") or 0, row["median_s"]["total"]))
                    if len(runs) < allot[id(p)].calls:
                        row["reason"] = (f"time budget: {len(runs)} of {allot[id(p)].calls} planned timed calls "
                                         "ran before this size's share of the budget ran out")
        bar.close()
        result = {
            "meta": _meta(cfg, device, weights, budget, peaks, explicit),
            "params": _params(pipelines),
            "rows": rows,
        }
        result["meta"]["wall_s"] = _clock() - start
        result["fits"] = fits(rows)
        result["speedups"] = speedups(rows)
        result["headline"] = headline(result["speedups"], rows)
        return result
    finally:
        torch.set_num_threads(saved_threads)


def _record_memory(row: dict, p, mem: PeakMemory, device: torch.device) -> None:
    if device.type == "cuda" and p.backend != "torch":
        return  # ONNX Runtime / TensorRT allocate outside torch's CUDA allocator: not measurable here
    row["measured_peak_bytes"] = max(row.get("measured_peak_bytes", 0), mem.peak_bytes)


def _fail(row: dict, err: BaseException, device: torch.device) -> None:
    row["status"] = "oom" if _is_oom(err) else "error"
    row["reason"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _finish_row(row: dict, runs: list[dict[str, float]], peak: float | None) -> None:
    stats = _summary(runs)
    row["runs"] = len(runs)
    row["total_s"] = [r["total"] for r in runs]
    row["median_s"] = {k: v["median"] for k, v in stats.items()}
    row["iqr_s"] = {k: (v["q25"], v["q75"]) for k, v in stats.items()}
    row["min_max_s"] = {k: (v["min"], v["max"]) for k, v in stats.items()}
    achieved, fraction = {}, {}
    for stage, fl in (row.get("flops") or {}).items():
        t = row["median_s"].get(stage)
        if t and t > 0 and fl:
            achieved[stage] = fl / t
            if peak:
                fraction[stage] = fl / t / peak
    row["achieved_flops_per_s"] = achieved
    row["peak_fraction"] = fraction


def _meta(cfg: SweepConfig, device, weights: str, budget, peaks, explicit_budget: bool) -> dict:
    notes = [f"pixel-space pipelines run in torch on {device}; latent pipelines on every requested backend"]
    if device.type == "cpu":
        notes.append("CPU run: absolute times are not comparable with the paper's RTX 4090 numbers; "
                     "ratios and exponents are what carry over")
    if len(cfg.presets) > 1:
        notes.append(f"presets {', '.join(cfg.presets)} in one interleaved sweep; "
                     f"{', '.join(PRESET_INDEPENDENT)} has no preset (rows 'any'): timed once per size and "
                     "compared with every preset")
    if cfg.time_budget_s is not None:
        notes.append(PLANNER_NOTE + f"; presets share the budget in the order {', '.join(cfg.presets)}")
        if device.type == "cpu":
            notes.append(WARMUP_NOTE)
        notes.append("projected_s is a projection (see projection_method), never a measurement")
    info = {
        "notes": notes,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "weights": weights if weights != "random" else WEIGHTS_NOTE,
        "preset": ",".join(cfg.presets),
        "presets": list(cfg.presets),
        "time_budget_s": cfg.time_budget_s,
        "memory_budget_bytes": budget,
        "memory_budget_kind": ("per pipeline (--memory-budget-gb): estimated weights + activations" if explicit_budget
                               else "free device memory after loading every model: estimated activations"),
        "matmul_peak_flops_per_s": peaks,
        "peak_method": f"best of 3 timed {cfg.peak_matmul_n}^3 torch.mm on the sweep device (2n^3 FLOPs)",
        "flops_method": "torch.utils.flop_counter.FlopCounterMode on meta tensors (T5 on real tensors): "
                        "matmul, conv, attention at 2 FLOPs/MAC; element-wise ops not counted; routed MoE "
                        "experts scaled to top-k",
        "memory_method": ("torch.cuda.max_memory_allocated delta" if device.type == "cuda" else
                          "peak RSS above the RSS at call entry, sampled every 2 ms from /proc/self/statm"),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    return info


def _params(pipelines) -> dict[str, dict[str, dict[str, int]]]:
    """Parameter counts per preset (``"any"`` for the preset-independent pipelines), then per pipeline."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for p in pipelines:
        group = out.setdefault(getattr(p, "preset", ANY_PRESET), {})
        if isinstance(p, BenchPipeline) and p.name not in group:
            group[p.name] = p.params()
    return {k: v for k, v in out.items() if v}


def _preset(row: dict) -> str:
    return row.get("preset") or ANY_PRESET


def fits(rows: list[dict]) -> list[dict]:
    """Exponent k of latency ∝ pixels^k per (preset, pipeline, backend, precision, aspect), total and DiT stage."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok" and "median_s" in r:
            groups.setdefault((_preset(r), r["pipeline"], r["backend"], r["precision"], r["aspect"]), []).append(r)
    out = []
    for (preset, name, backend, precision, aspect), rs in groups.items():
        fit = fit_exponent([r["pixels"] for r in rs], [r["median_s"]["total"] for r in rs])
        if fit is None:
            continue
        entry = {"pipeline": name, "preset": preset, "backend": backend, "precision": precision, "aspect": aspect,
                 "k": fit.k, "c": fit.c, "r2": fit.r2, "points": fit.points}
        if all("DiT" in r["median_s"] for r in rs):
            dit = fit_exponent([r["pixels"] for r in rs], [r["median_s"]["DiT"] for r in rs])
            if dit is not None:
                entry["k_dit"] = dit.k
        out.append(entry)
    return out


def pixel_twin(latent_name: str) -> str | None:
    """The pixel-space DiT pipeline with the same head and sampler as a latent one (same parameters)."""
    if latent_name == "latent-reg":
        return "pixel-dit-reg"
    if latent_name.startswith("latent-flow-reuse"):
        return "pixel-dit-" + latent_name[len("latent-"):]
    return None


def speedups(rows: list[dict]) -> list[dict]:
    """Per preset, size and precision: each latent pipeline's speed-up over the fastest pixel-space
    pipeline (torch) of the same preset or of none (NAFNet+DenseFuse), and over its pixel-space twin
    (same DiT size, head and sampler: the latent-space effect alone)."""
    out = []
    ok = [r for r in rows if r["status"] == "ok" and "median_s" in r]
    keys = sorted({(_preset(r), r["precision"], r["aspect"], r["resolution"]) for r in ok if r["space"] == "latent"})
    for preset, precision, aspect, res in keys:
        same = [r for r in ok if (r["precision"], r["aspect"], r["resolution"]) == (precision, aspect, res)
                and _preset(r) in (preset, ANY_PRESET)]
        pixel = [r for r in same if r["space"] == "pixel"]
        if not pixel:
            continue
        best = min(pixel, key=lambda r: r["median_s"]["total"])
        for r in same:
            if r["space"] != "latent" or _preset(r) != preset:
                continue
            out.append({"pipeline": r["pipeline"], "preset": preset, "backend": r["backend"], "precision": precision,
                        "aspect": aspect, "resolution": res, "best_pixel": best["pipeline"],
                        "best_pixel_preset": _preset(best),
                        "best_pixel_s": best["median_s"]["total"], "latent_s": r["median_s"]["total"],
                        "speedup": best["median_s"]["total"] / r["median_s"]["total"]})
            twin = next((t for t in pixel if t["pipeline"] == pixel_twin(r["pipeline"])), None)
            if twin is not None:
                out[-1].update(twin=twin["pipeline"], twin_s=twin["median_s"]["total"],
                               twin_speedup=twin["median_s"]["total"] / r["median_s"]["total"])
    return out


def headline(speedups_: list[dict], rows: list[dict], pipeline: str = "latent-reg") -> list[dict]:
    """Per preset (and backend / precision / aspect): ``pipeline`` against the fastest pixel-space
    pipeline at the largest size where both were measured, and the largest size asked for, with what
    kept it from being measured there (over-budget, infeasible, ...) when it is not the same size."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for s in speedups_:
        if s["pipeline"] == pipeline:
            groups.setdefault((s["preset"], s["backend"], s["precision"], s["aspect"]), []).append(s)
    for (preset, backend, precision, aspect), ss in groups.items():
        top = max(ss, key=lambda s: s["resolution"])
        entry = dict(top)
        mine = [r for r in rows if r["pipeline"] == pipeline and _preset(r) == preset
                and (r["backend"], r["precision"], r["aspect"]) == (backend, precision, aspect)]
        largest = max((r["resolution"] for r in mine), default=top["resolution"])
        entry["largest_requested"] = largest
        # the pixel-space pipelines that were not measured at that size (the "fastest" is among the rest)
        entry["pixel_not_measured"] = [
            {"pipeline": r["pipeline"], "status": r["status"], "projected_s": r.get("projected_s")}
            for r in rows if r["space"] == "pixel" and r["status"] != "ok" and _preset(r) in (preset, ANY_PRESET)
            and (r["backend"], r["precision"], r["aspect"], r["resolution"]) == ("torch", top["precision"], aspect,
                                                                                  top["resolution"])]
        if largest != top["resolution"]:
            at = [r for r in mine if r["resolution"] == largest]
            entry["largest_status"] = at[0]["status"] if at else "?"
            entry["largest_reason"] = at[0].get("reason", "") if at else ""
        out.append(entry)
    return out


__all__ = ["SweepConfig", "run_sweep", "image_size", "parse_aspect", "build_pipelines", "pipeline_names", "fits",
           "speedups", "headline", "WEIGHTS_NOTE", "ANY_PRESET", "PRESET_INDEPENDENT"]
