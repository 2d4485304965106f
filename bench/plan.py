"""What the sweep runs (:mod:`latentfuse.bench.sweep` executes it, :mod:`latentfuse.bench.analysis` summarises it).

Everything here is decided from the settings, the built pipelines and what was measured so far, and
nothing here runs a pipeline or reads the clock (the runner passes the seconds left in):

* :class:`SweepConfig` and its checks, the image sizes (:func:`image_size`, ascending pixel order:
  :func:`sweep_shapes`) and the pipeline names (:func:`pipeline_names`);
* the memory budget (:func:`memory_budget`) and the analytic pass (:func:`plan_sizes`): one row per
  (size, pipeline) with its analytic FLOPs and estimated peak, and the reason a pipeline is not run
  there (``unavailable``, ``analytic``, ``infeasible``);
* the time budget (``--time-budget``): each remaining call's projected seconds (:func:`project`) and
  the calls fitted into the seconds left (:func:`plan_budget`, :func:`latentfuse.bench.budget.plan_calls`), and
  the ``over-budget`` reason (:func:`over_budget_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from latentfuse.bench.budget import (FIRST_CALL_EFFICIENCY, WARMUP_SKIP_S, Allotment, Call, Projection, plan_calls,
                                     project_from_rate, project_own)
from latentfuse.bench.memory import available_bytes
from latentfuse.bench.pipelines import BenchPipeline, Unavailable, latent_variants
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import PRECISIONS

# the bundle precisions bench times: int8 is an explicit Q/DQ bundle on onnxruntime / tensorrt; fp8 runs nowhere here
BENCH_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp8")
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
        bad = [p for p in self.precisions if p not in BENCH_PRECISIONS]
        if bad:
            problems.append(f"unknown precision(s) {bad}: choose from {', '.join(BENCH_PRECISIONS)}")
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


def pipeline_names(cfg: SweepConfig) -> tuple[str, ...]:
    """Every pipeline name with these step counts: the latent ones, then the pixel-space ones."""
    return tuple(latent_variants(cfg.flow_steps, cfg.euler_steps)) + (
        "nafnet+densefuse", "pixel-dit-reg", f"pixel-dit-flow-reuse{cfg.flow_steps}")


def is_preset_independent(p) -> bool:
    return bool(getattr(p, "preset_independent", False)) or p.name in PRESET_INDEPENDENT


def preset_order(cfg: SweepConfig) -> dict[str, int]:
    """Planning priority of a preset (lower first): the preset-free pipelines, then the presets as given."""
    return {ANY_PRESET: 0, **{pr: i for i, pr in enumerate(cfg.presets)}}


def peak_precisions(cfg: SweepConfig, device_type: str) -> tuple[str, ...]:
    """The precisions whose float matmul peak the sweep measures (none when it times nothing)."""
    if cfg.analytic_only:
        return ()
    # int8: integer kernels have no float matmul peak to be a fraction of
    return tuple(p for p in cfg.precisions if not ((p == "fp16" and device_type != "cuda") or p == "int8"))


# ---------------------------------------------------------------------------- sizes and rows


@dataclass(frozen=True)
class Shape:
    resolution: int
    aspect: str
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def sweep_shapes(cfg: SweepConfig) -> list[Shape]:
    """Every (resolution, aspect) as an image size, in ascending pixel order: what a size costs is
    projected from the smaller sizes already measured."""
    return sorted((Shape(r, a, *image_size(r, a)) for a in cfg.aspects for r in cfg.resolutions),
                  key=lambda s: s.pixels)


@dataclass(frozen=True)
class MemoryBudget:
    bytes: int | None
    explicit: bool     # --memory-budget-gb: bounds weights + activations; else the free memory: activations

    def limit(self, weight_bytes: int) -> int | None:
        if self.bytes is None:
            return None
        return self.bytes if self.explicit else self.bytes + weight_bytes


def memory_budget(cfg: SweepConfig, device) -> MemoryBudget:
    """An explicit budget bounds each pipeline's estimated peak (weights + activations). Without one,
    every model is already loaded, so a pipeline fits if its activations fit in the free memory."""
    explicit = cfg.memory_budget_gb is not None
    return MemoryBudget(int(cfg.memory_budget_gb * 2 ** 30) if explicit else available_bytes(device), explicit)


def new_row(p, shape: Shape) -> dict:
    return {"pipeline": p.name, "preset": getattr(p, "preset", ANY_PRESET), "space": p.space,
            "backend": p.backend, "precision": p.precision, "resolution": shape.resolution, "aspect": shape.aspect,
            "height": shape.height, "width": shape.width, "pixels": shape.pixels, "nfe": getattr(p, "nfe", None),
            "status": "ok", "reason": ""}


@dataclass
class SizePlan:
    """One image size: its (pipeline, row) pairs to run; the other rows already carry their status."""

    shape: Shape
    runnable: list[tuple[Any, dict]] = field(default_factory=list)


def analytic_row(p, shape: Shape, reference, cfg: SweepConfig, memory: MemoryBudget) -> tuple[dict, bool]:
    """The row of ``p`` at ``shape`` with its analytic cost (from ``reference``, a runnable pipeline of
    the same preset and name, for an unavailable one) and whether it is to be run."""
    row = new_row(p, shape)
    h, w = shape.height, shape.width
    limit = an = None
    if reference is not None:
        an = reference.analytic(h, w)
        row.update(flops=an.flops, total_flops=an.total_flops, flops_method=an.method,
                   est_peak_bytes=an.peak_bytes if reference is p else None)
        limit = memory.limit(an.weight_bytes)
        if row["nfe"] is None:
            row["nfe"] = reference.nfe
    if isinstance(p, Unavailable):
        row.update(status="unavailable", reason=p.reason)
    elif cfg.analytic_only:
        row.update(status="analytic", reason="analytic only: not timed")
    elif limit is not None and an.weight_bytes + cfg.memory_headroom * (an.peak_bytes - an.weight_bytes) > limit:
        row.update(status="infeasible", reason=(
            f"estimated peak {row['est_peak_bytes'] / 2**30:.2f} GiB (activations x{cfg.memory_headroom:g} "
            f"headroom) exceeds the memory budget "
            f"{limit / 2**30:.2f} GiB" + ("" if memory.explicit else " (free memory + its weights)")))
    else:
        return row, True
    return row, False


def plan_sizes(cfg: SweepConfig, pipelines: Sequence[Any], memory: MemoryBudget) -> tuple[list[dict], list[SizePlan]]:
    """The analytic pass: every row (nothing dropped) and, per size, the pipelines to run there."""
    from tqdm.auto import tqdm

    # a reference per (preset, name) (any backend / precision) gives the FLOPs of unavailable rows
    reference = {(p.preset, p.name): p for p in pipelines if isinstance(p, BenchPipeline)}
    rows: list[dict] = []
    sizes: list[SizePlan] = []
    for shape in tqdm(sweep_shapes(cfg), desc="analytic cost", disable=not cfg.progress, leave=False):
        size = SizePlan(shape)
        for p in pipelines:
            ref = p if isinstance(p, BenchPipeline) else reference.get((p.preset, p.name))
            row, run = analytic_row(p, shape, ref, cfg, memory)
            if run:
                size.runnable.append((p, row))
            rows.append(row)
        sizes.append(size)
    return rows, sizes


def planned_calls(cfg: SweepConfig, sizes: Sequence[SizePlan]) -> int:
    """Every call the settings ask for (the progress bar's first total)."""
    return sum(len(s.runnable) * (cfg.warmup + cfg.repeat) for s in sizes)


# ---------------------------------------------------------------------------- time budget


def ident(p) -> tuple:
    """What measurements are pooled under: (preset, name, backend, precision)."""
    return (p.preset, p.name, p.backend, p.precision)


Point = tuple[int, int, float]   # (pixels, analytic FLOPs, median seconds)


@dataclass(frozen=True)
class FirstCall:
    """A pipeline's calls at the current size after its first round: the projection of its repeats."""

    ident: tuple
    point: Point
    calls: int      # timed calls made


def project(p, row: dict, measured: dict[tuple, list[Point]], peaks: dict[str, float],
            extra: dict[tuple, Point]) -> Projection:
    """Seconds of one call of ``p`` at ``row``'s size, from its own medians (``measured`` at earlier
    sizes, ``extra``: ident -> point of the first calls at the current size) or, with none, a guess."""
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


@dataclass(frozen=True)
class BudgetInputs:
    """What every re-plan of one sweep reads (``measured`` grows as sizes finish)."""

    sizes: Sequence[SizePlan]
    measured: dict[tuple, list[Point]]
    peaks: dict[str, float]
    priority: dict[str, int]
    repeat: int
    warmup: int
    skip_slow_warmup: bool      # CPU: no warm-up for a guessed or slow call (bench.budget)


@dataclass
class BudgetPlan:
    """Allotments and projections keyed (size index, id(pipeline)) for the sizes from ``si`` on."""

    si: int
    allotments: dict[tuple[int, int], Allotment]
    projections: dict[tuple[int, int], Projection]
    left_s: float               # seconds of the budget left when planned
    reserve_s: float            # seconds planned for the later sizes: this size may not eat them
    first: dict[int, FirstCall]

    def allotment(self, p) -> Allotment:
        return self.allotments[(self.si, id(p))]

    def projection(self, p) -> Projection:
        return self.projections[(self.si, id(p))]

    def calls_left(self) -> int:
        """Calls still to make under this plan (the timed calls of the first round already made excluded)."""
        return sum(a.warmup + a.calls - (self.first[k[1]].calls if k[0] == self.si and k[1] in self.first else 0)
                   for k, a in self.allotments.items())


def plan_budget(inputs: BudgetInputs, si: int, current: Sequence[tuple[Any, dict]], left_s: float,
                first: dict[int, FirstCall] | None = None) -> BudgetPlan:
    """Allotments for the sizes ``si``.. (``current``: size si's (pipeline, row) pairs still to plan)
    within ``left_s`` seconds; ``first``: id(p) -> its calls once size si's first round ran."""
    first = first or {}
    extra = {f.ident: f.point for f in first.values()}
    proj, calls = {}, []
    for sj in range(si, len(inputs.sizes)):
        for p, row in (current if sj == si else inputs.sizes[sj].runnable):
            key = (sj, id(p))
            mine = first.get(id(p)) if sj == si else None
            if mine is not None:
                proj[key] = Projection(mine.point[2], "its first call at this size")
            else:
                proj[key] = project(p, row, inputs.measured, inputs.peaks, extra)
            done = mine.calls if mine is not None else 0
            guess = ident(p) not in inputs.measured and mine is None
            calls.append(Call(key, inputs.priority.get(p.preset, 0), proj[key].seconds, done=done, guess=guess))
    plans = plan_calls(calls, left_s, inputs.repeat, inputs.warmup, skip_slow_warmup=inputs.skip_slow_warmup)
    reserve = sum(a.cost(proj[k].seconds) for k, a in plans.items() if k[0] > si)
    return BudgetPlan(si, plans, proj, left_s, reserve, first)


def over_budget_reason(seconds: float, free_s: float, left_s: float) -> str:
    reason = f"projected {seconds:.1f} s per call, {max(free_s, 0.0):.0f} s of the budget left"
    if left_s - free_s > 1.0:
        reason += f" for it ({max(left_s, 0.0):.0f} s left in all, the rest planned for cheaper calls first)"
    return reason


def short_reason(timed: int, planned: int) -> str:
    return (f"time budget: {timed} of {planned} planned timed calls "
            "ran before this size's share of the budget ran out")


__all__ = ["SweepConfig", "parse_aspect", "image_size", "pipeline_names", "is_preset_independent", "Shape",
           "sweep_shapes", "MemoryBudget", "memory_budget", "SizePlan", "plan_sizes", "planned_calls", "ident",
           "FirstCall", "project", "BudgetInputs", "BudgetPlan", "plan_budget", "over_budget_reason",
           "BENCH_PRECISIONS", "BACKENDS", "WEIGHTS_NOTE", "ANY_PRESET", "PRESET_INDEPENDENT", "PLANNER_NOTE",
           "WARMUP_NOTE"]
