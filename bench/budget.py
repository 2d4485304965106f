"""The sweep's time budget: project each pipeline's seconds per call, then fit the calls into the
seconds that are left (``latentfuse bench --time-budget MINUTES``).

Projection (never reported as a measurement: it goes into ``projected_s``), best source first:

1. the pipeline's own medians at >= 2 earlier sizes: latency ∝ pixels^k (:func:`latentfuse.bench.flops.fit_exponent`,
   k clamped to [0.8, 2.5] against two-point noise), anchored at the largest measured size;
2. its own median at one earlier size, scaled by the ratio of analytic FLOPs;
3. nothing of its own yet: analytic FLOPs / (``FIRST_CALL_EFFICIENCY`` × the measured matmul peak).
   Other pipelines' achieved FLOP/s do not carry over (on CPU a tiny model reaches ~1 % of the peak,
   a paper-size one ~20 %), so this guess lives only until the pipeline's first call.

Planning (:func:`plan_calls`) fills the seconds left with every remaining (size, pipeline) call, in
levels, each level in priority order (presets in the order given, then the cheapest call first):
(1) one timed call each, skipping what does not fit; (2) a second timed call (a spread); (3) the
remaining repeats; (4) the warm-up, bought last and, on CPU, where the first call at a shape is not
special (no autotuning, no lazy engine build), never for a call projected over ``WARMUP_SKIP_S`` nor
for one whose projection is still a guess. The sweep runs only the current size's part; the rest is
the reserve that keeps the later sizes covered. It re-plans before every size, before every first call
at a size (so a wrong guess for one pipeline does not spend a later preset's seconds), and after the
size's first round (the repeats, with those calls as the projection). A call that gets no seconds is
reported ``over-budget`` with its projection and analytic cost, never dropped. The budget is soft: a
running call is never interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from latentfuse.bench.flops import fit_exponent

#: On CPU a call projected above this many seconds gets no warm-up (it would cost a whole timed call).
WARMUP_SKIP_S = 3.0
#: Fraction of the matmul peak assumed for a pipeline before anything was measured. Paper-size models
#: reach about this on CPU; small ones far less, but they start at the smallest size, where an
#: optimistic guess costs seconds, and each size re-plans its repeats after its first round.
FIRST_CALL_EFFICIENCY = 0.2
K_RANGE = (0.8, 2.5)


@dataclass(frozen=True)
class Projection:
    seconds: float
    method: str


def project_own(points: Sequence[tuple[int, int, float]], pixels: int, flops: int | None) -> Projection | None:
    """Seconds per call at ``pixels`` from the pipeline's own (pixels, flops, median seconds) points."""
    pts = [(p, f, s) for p, f, s in points if s > 0]
    if not pts:
        return None
    p0, f0, s0 = max(pts)
    fit = fit_exponent([p for p, _, _ in pts], [s for _, _, s in pts]) if len({p for p, _, _ in pts}) >= 2 else None
    if fit is not None:
        k = min(max(fit.k, K_RANGE[0]), K_RANGE[1])
        return Projection(s0 * (pixels / p0) ** k,
                          f"own medians at {fit.points} sizes, latency ∝ pixels^{k:.2f}")
    if flops and f0:
        return Projection(s0 * flops / f0, f"own median at {p0} px scaled by the analytic FLOPs ratio")
    return Projection(s0 * pixels / p0, f"own median at {p0} px scaled by the pixel ratio")


def project_from_rate(flops: int | None, flops_per_s: float, source: str) -> Projection:
    """Seconds per call as analytic FLOPs / an achieved (or assumed) FLOP/s."""
    return Projection(float(flops or 0) / max(flops_per_s, 1.0),
                      f"analytic FLOPs / {flops_per_s / 1e9:.1f} GFLOP/s ({source})")


@dataclass(frozen=True)
class Call:
    """One (size, pipeline) to plan: ``priority`` orders presets (lower first), ``seconds`` is projected;
    ``done`` timed calls were already made (re-planning a size after its first round: they cost nothing);
    ``guess``: not projected from the pipeline's own measurements, so on CPU its first call is timed
    rather than spent on a warm-up of unknown length."""

    key: Hashable
    priority: int
    seconds: float
    done: int = 0
    guess: bool = False


@dataclass
class Allotment:
    warmup: int = 0
    calls: int = 0          # timed calls; 0: over-budget
    free_s: float = 0.0     # seconds still unplanned when its first call was considered

    def cost(self, seconds: float) -> float:
        return (self.warmup + self.calls) * seconds


def plan_calls(calls: Sequence[Call], left_s: float, repeat: int, warmup: int,
               skip_slow_warmup: bool = True, warmup_skip_s: float = WARMUP_SKIP_S) -> dict[Hashable, Allotment]:
    """Fit warm-up and timed calls into ``left_s`` seconds, coverage first (see the module doc)."""
    order = sorted(calls, key=lambda c: (c.priority, c.seconds))
    out = {c.key: Allotment() for c in calls}
    free = float(left_s)

    def buy(c: Call, n: int) -> int:
        nonlocal free
        if c.seconds <= 0:
            got = n
        else:
            got = min(n, int(free // c.seconds + 1e-9)) if free > 0 else 0
        free -= got * c.seconds
        return got

    for c in order:                                  # (1) one timed call each
        out[c.key].free_s = free
        out[c.key].calls = c.done if c.done else buy(c, 1)
    if repeat >= 2:                                  # (2) a second call: a spread
        for c in order:
            if out[c.key].calls == 1:
                out[c.key].calls += buy(c, 1)
    for c in order:                                  # (3) the remaining repeats
        a = out[c.key]
        if a.calls >= min(2, repeat) and repeat > a.calls:
            a.calls += buy(c, repeat - a.calls)
    for c in order:                                  # (4) warm-up last
        a = out[c.key]
        if a.calls and warmup and not c.done and not (skip_slow_warmup and (c.guess or c.seconds > warmup_skip_s)):
            a.warmup = buy(c, warmup) if out[c.key].calls == repeat else 0
    return out


__all__ = ["Projection", "project_own", "project_from_rate", "Call", "Allotment", "plan_calls",
           "WARMUP_SKIP_S", "FIRST_CALL_EFFICIENCY"]
