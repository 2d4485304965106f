"""The latency sweep: every pipeline (latent and pixel-space) at every resolution, aspect ratio,
backend and precision, in one run (MMAIF 4.6.4 / Table 5, measured on this machine).

The sweep is three parts: :mod:`latentfuse.bench.plan` decides what to run (sizes, pipelines, the analytic pass,
memory and time budgets, skip reasons), this module builds the pipelines and runs the plan (warm-up,
timed rounds, progress bar), :mod:`latentfuse.bench.analysis` turns the measurements into statistics, fits,
speed-ups and the result (:mod:`latentfuse.bench.report` writes ``bench.json``, ``bench.md`` and the plots).

For each image size the sweep first computes every pipeline's analytic cost (:mod:`latentfuse.bench.flops`) and
drops nothing: a pipeline whose estimated peak memory exceeds the budget is recorded as
``infeasible`` (with its FLOPs), one that runs out of memory as ``oom``, one that cannot run in a
setting as ``unavailable``. The rest run ``warmup`` untimed calls each, then ``repeat`` timed rounds;
each round visits every pipeline once (round-robin, the start rotating by one per round), so slow
drifts of the machine (thermal, other load) hit all pipelines alike instead of whichever ran last.

Per pipeline and size: median and inter-quartile range / min / max of the total and of every stage,
peak memory (:mod:`latentfuse.bench.memory`), achieved FLOP/s per stage as a fraction of the measured matmul
peak. Per pipeline over sizes: the fitted exponent k of latency ∝ pixels^k. Per size: the speed-up of
each latent pipeline over the fastest pixel-space pipeline of the same precision.

Several presets run in one sweep (``presets=("tiny", "paper")``): the latent pipelines and their
parameter-matched pixel-space DiTs are built per preset, NAFNet+DenseFuse (which has no preset) once;
every size interleaves all of them, every row carries its ``preset`` (``"any"`` for the
preset-independent ones, which every preset's speed-ups use). Sizes run in ascending pixel order.

With ``time_budget_s`` the warm-up and repeat counts become upper bounds: before each size
:mod:`latentfuse.bench.budget` projects every remaining call and fits them into the seconds left (coverage
first, presets in the order given), so a pipeline may get fewer calls, or none (``over-budget``).
The clock starts when :func:`run_sweep` is called (model building and the analytic pass count).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from latentfuse.bench.analysis import assemble, finish_row
from latentfuse.bench.budget import Allotment
from latentfuse.bench.flops import matmul_peak_flops
from latentfuse.bench.memory import PeakMemory
from latentfuse.bench.pipelines import Unavailable, latent_variants
from latentfuse.bench.plan import (ANY_PRESET, PRESET_INDEPENDENT, BudgetInputs, BudgetPlan, FirstCall, SizePlan,
                                   SweepConfig, ident, is_preset_independent, memory_budget, over_budget_reason,
                                   peak_precisions, pipeline_names, plan_budget, plan_sizes, planned_calls, preset_order,
                                   short_reason)
from latentfuse.model.errors import LatentfuseError

_clock = time.perf_counter  # the sweep's clock (tests replace it)


# ---------------------------------------------------------------------------- building


def load_components(cfg: SweepConfig):
    from latentfuse.model.components import FusionComponents

    if cfg.checkpoint:
        return FusionComponents.from_pretrained(cfg.checkpoint), "checkpoint " + str(cfg.checkpoint)
    return FusionComponents.from_preset(cfg.preset), "random"


def build_pipelines(cfg: SweepConfig, components, device: torch.device) -> list[Any]:
    """Every (backend, precision) × pipeline: a BenchPipeline, or an Unavailable saying why."""
    from latentfuse.bench.competitors import pixel_pipelines
    from latentfuse.bench.pipelines import bundle_latent_pipelines, torch_latent_pipelines

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

    from latentfuse.export.bundle import export_bundle

    out = Path(cfg.export_dir) / (f"bundle-{precision}" if cfg.checkpoint else f"bundle-{cfg.preset}-{precision}")
    key = (str(out), precision)
    if key not in _EXPORTED:
        if not (out / "manifest.json").is_file():
            quantization = None
            if precision == "int8":
                from latentfuse.export.quantize import QuantOptions

                # tuned for the backend it is timed on: TensorRT, else ONNX Runtime's CPU kernels
                quantization = QuantOptions(precision="int8",
                                            target="tensorrt" if "tensorrt" in cfg.backends else "onnxruntime")
            export_bundle(cfg.checkpoint or out, out, precision=precision, components=components,
                          progress=cfg.progress, force=True, quantization=quantization)
        _EXPORTED[key] = str(out)
    return _EXPORTED[key]


# ---------------------------------------------------------------------------- running


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(err).lower()


def _pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random source pair (content does not change the cost of these networks)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.random((height, width, 3), dtype=np.float32) for _ in range(2))  # type: ignore[return-value]


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


@dataclass
class Sweep:
    """What the runner carries from size to size (planning inputs, the clock's start, the progress bar)."""

    cfg: SweepConfig
    device: torch.device
    peaks: dict[str, float]
    sizes: list[SizePlan]
    start: float
    bar: Any
    measured: dict[tuple, list[tuple[int, int, float]]] = field(default_factory=dict)  # ident -> points

    @property
    def budget_s(self) -> float | None:
        return self.cfg.time_budget_s

    @property
    def hard_deadline(self) -> float | None:
        return None if self.budget_s is None else self.start + self.budget_s

    def deadline(self, plan: BudgetPlan) -> float:
        """The end of the current size's share: the later sizes' reserve stays untouched."""
        return self.start + self.budget_s - plan.reserve_s

    def replan(self, si: int, current, first: dict[int, FirstCall] | None = None) -> BudgetPlan:
        """Plan the sizes si.. with the seconds left now; the progress bar's total follows the plan."""
        inputs = BudgetInputs(self.sizes, self.measured, self.peaks, preset_order(self.cfg), self.cfg.repeat,
                              self.cfg.warmup, skip_slow_warmup=self.device.type == "cpu")
        plan = plan_budget(inputs, si, current, self.budget_s - (_clock() - self.start), first)
        self.bar.total = self.bar.n + plan.calls_left()
        return plan


@dataclass
class Entry:
    """A pipeline to run at the current size."""

    p: Any
    row: dict
    allot: Allotment
    est: float = 0.0    # seconds of one call: the last one at this size, else the projection
    runs: list[dict[str, float]] = field(default_factory=list)


def _allot(sweep: Sweep, si: int, size: SizePlan) -> tuple[list[Entry], float | None]:
    """The warm-up and timed calls of each runnable pipeline at size ``si`` and the size's deadline;
    under a time budget a pipeline that gets no call is marked over-budget and left out."""
    cfg = sweep.cfg
    if sweep.budget_s is None:
        return [Entry(p, row, Allotment(cfg.warmup, cfg.repeat)) for p, row in size.runnable], None
    plan = sweep.replan(si, size.runnable)
    entries = []
    for p, row in size.runnable:
        pr, al = plan.projection(p), plan.allotment(p)
        row.update(projected_s=pr.seconds, projection_method=pr.method,
                   planned_warmup=al.warmup, planned_calls=al.calls)
        if not al.calls:
            row.update(status="over-budget", reason=over_budget_reason(pr.seconds, al.free_s, plan.left_s))
        else:
            entries.append(Entry(p, row, al))
    return entries, sweep.deadline(plan)


def _in_time(e: Entry, limit: float | None) -> bool:
    return limit is None or _clock() + e.est <= limit


def _timed(e: Entry, device: torch.device) -> tuple[dict[str, float], PeakMemory]:
    t0 = _clock()
    with PeakMemory(device) as mem:
        times = e.p.run()
    e.est = _clock() - t0
    return times, mem


def _warm_up(e: Entry, a, b, deadline: float | None, device: torch.device, bar) -> bool:
    """Set the pipeline up and make its untimed calls; False when it failed (its row says why)."""
    e.est = e.row.get("projected_s", 0.0)
    e.row["warmup_calls"] = 0
    e.p.setup(a, b)
    try:
        for _ in range(e.allot.warmup):
            if _in_time(e, deadline):
                _times, mem = _timed(e, device)
                _record_memory(e.row, e.p, mem, device)
                e.row["warmup_calls"] += 1
            bar.update(1)
        return True
    except Exception as err:
        _fail(e.row, err, device)
        bar.update(e.allot.warmup - e.row["warmup_calls"] + e.allot.calls)
        return False


def _first_calls(alive: list[Entry]) -> dict[int, FirstCall]:
    """id(p) -> the calls made so far at this size, of every pipeline still ok that made one."""
    return {id(e.p): FirstCall(ident(e.p), (e.row["pixels"], e.row.get("total_flops") or 0,
                                           statistics.median(t["total"] for t in e.runs)), len(e.runs))
            for e in alive if e.row["status"] == "ok" and e.runs}


def _timed_rounds(sweep: Sweep, si: int, entries: list[Entry], alive: list[Entry], deadline: float | None) -> None:
    """Round-robin timed calls (the start rotating by one per round); under a time budget re-planned
    before each first call at this size and after the first round."""
    bar, device, budgeted = sweep.bar, sweep.device, sweep.budget_s is not None
    hard_deadline = sweep.hard_deadline
    r = 0
    while r < max((e.allot.calls for e in entries), default=0):
        if r == 1 and budgeted:
            # every pipeline made its first timed call at this size: re-plan the repeats with them
            first = _first_calls(alive)
            plan = sweep.replan(si, [(e.p, e.row) for e in alive if id(e.p) in first], first)
            deadline = sweep.deadline(plan)
            for e in alive:
                if id(e.p) in first:
                    e.allot = Allotment(e.allot.warmup, plan.allotment(e.p).calls)
                    e.row["planned_calls"] = e.allot.calls
        order = alive[r % len(alive):] + alive[: r % len(alive)] if alive else []
        for e in order:
            if e.allot.calls <= r:
                continue
            if e.row["status"] != "ok":
                bar.update(1)
                continue
            if r == 0 and budgeted and not e.runs:
                # re-plan before each first call with what this size measured so far: a guessed
                # projection of the calls before it does not spend the seconds of the presets after
                plan = sweep.replan(si, [(q.p, q.row) for q in alive if q.row["status"] == "ok"], _first_calls(alive))
                deadline = sweep.deadline(plan)
                pr, al = plan.projection(e.p), plan.allotment(e.p)
                e.row.update(projected_s=pr.seconds, projection_method=pr.method)
                if not e.row["warmup_calls"]:
                    e.est = pr.seconds
                if not al.calls:
                    e.row.update(status="over-budget", reason=over_budget_reason(pr.seconds, al.free_s, plan.left_s))
                    bar.update(1)
                    continue
            # a repeat may not eat the later sizes' reserve; a first timed call only the budget's end
            if not _in_time(e, deadline if e.runs else hard_deadline):
                if not e.runs:
                    e.row.update(status="over-budget", reason=over_budget_reason(
                        e.est, hard_deadline - _clock(), hard_deadline - _clock()))
                bar.update(1)
                continue
            try:
                times, mem = _timed(e, device)
                e.runs.append(times)
                _record_memory(e.row, e.p, mem, device)
            except Exception as err:
                _fail(e.row, err, device)
            bar.update(1)
        r += 1


def _finish(sweep: Sweep, e: Entry) -> None:
    """The row's statistics, and its median as a measured point for the later sizes' projections."""
    row, runs = e.row, e.runs
    row["timed_calls"] = len(runs)
    if row["status"] == "ok" and runs:
        # the torch matmul peak is the ceiling of torch on this device; an ONNX Runtime session
        # next to a GPU may run on another device (its execution provider), so no fraction there
        same_device = e.p.backend == "torch" or sweep.device.type == "cpu"
        finish_row(row, runs, sweep.peaks.get(e.p.precision) if same_device else None)
        sweep.measured.setdefault(ident(e.p), []).append(
            (row["pixels"], row.get("total_flops") or 0, row["median_s"]["total"]))
        if len(runs) < e.allot.calls:
            row["reason"] = short_reason(len(runs), e.allot.calls)


def _run_size(sweep: Sweep, si: int, size: SizePlan) -> None:
    entries, deadline = _allot(sweep, si, size)
    shape = size.shape
    a, b = _pair(shape.height, shape.width)
    postfix = f"{shape.width}x{shape.height}"
    if sweep.budget_s is not None:
        postfix += f", budget left {max(0.0, sweep.hard_deadline - _clock()) / 60:.1f} min"
    sweep.bar.set_postfix_str(postfix)
    alive = [e for e in entries if _warm_up(e, a, b, deadline, sweep.device, sweep.bar)]
    _timed_rounds(sweep, si, entries, alive, deadline)
    for e in alive:
        _finish(sweep, e)


def run_sweep(cfg: SweepConfig) -> dict:
    """Run the sweep; returns the JSON-ready result (see :mod:`latentfuse.bench.report` for the files)."""
    from tqdm.auto import tqdm

    start = _clock()
    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise LatentfuseError("--device cuda was asked for but torch sees no CUDA GPU")
        pipelines, weights = _load_all(cfg, device)
        memory = memory_budget(cfg, device)
        peaks = {precision: matmul_peak_flops(device, torch.float16 if precision == "fp16" else torch.float32,
                                              n=cfg.peak_matmul_n)
                 for precision in peak_precisions(cfg, device.type)}
        rows, sizes = plan_sizes(cfg, pipelines, memory)
        bar = tqdm(total=planned_calls(cfg, sizes), desc="bench", unit="call", disable=not cfg.progress)
        sweep = Sweep(cfg, device, peaks, sizes, start, bar)
        for si, size in enumerate(sizes):
            _run_size(sweep, si, size)
        bar.close()
        return assemble(cfg, device, weights, memory, peaks, pipelines, rows, _clock() - start)
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


__all__ = ["SweepConfig", "run_sweep", "image_size", "parse_aspect", "build_pipelines", "pipeline_names", "fits",
           "speedups", "headline", "WEIGHTS_NOTE", "ANY_PRESET", "PRESET_INDEPENDENT"]
