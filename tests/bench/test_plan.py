"""bench.plan on its own: the analytic pass and the time-budget plan, with no pipeline run and no clock."""

import pytest

from latentfuse.bench.analysis import finish_row, summary
from latentfuse.bench.pipelines import Analytic, BenchPipeline, Unavailable
from latentfuse.bench.plan import (ANY_PRESET, BudgetInputs, FirstCall, MemoryBudget, SweepConfig, over_budget_reason,
                                   plan_budget, plan_sizes, planned_calls, sweep_shapes)


class Sized(BenchPipeline):
    """Never run: FLOPs = pixels x ``scale``, peak = ``peak`` bytes (``weights`` of them resident)."""

    space, stages = "pixel", ("Net",)

    def __init__(self, name, scale=1, peak=1, weights=0, preset="tiny"):
        super().__init__("torch", "fp32", "cpu")
        self.name, self.scale, self.peak, self.weights, self.preset = name, scale, peak, weights, preset

    def setup(self, a, b):
        raise AssertionError("planning must not set a pipeline up")

    def run(self):
        raise AssertionError("planning must not run a pipeline")

    def params(self):
        return {"Net": 1}

    def _analytic_uncached(self, h, w):
        return Analytic(flops={"Net": h * w * self.scale}, peak_bytes=self.peak, weight_bytes=self.weights)


def test_shapes_run_in_ascending_pixel_order():
    shapes = sweep_shapes(SweepConfig(resolutions=(64, 32), aspects=("16:9", "1:1")))
    assert [(s.resolution, s.aspect, s.height, s.width) for s in shapes] == [
        (32, "16:9", 16, 32), (32, "1:1", 32, 32), (64, "16:9", 32, 64), (64, "1:1", 64, 64)]


def test_analytic_pass_keeps_every_row_and_says_why_one_is_not_run():
    small, big = Sized("small", peak=100), Sized("big", peak=10_000, weights=1_000)
    gone = Unavailable("small", "latent", "no bundle")
    gone.backend, gone.precision, gone.preset = "onnxruntime", "fp32", "tiny"
    cfg = SweepConfig(resolutions=(32, 64), repeat=2, warmup=1, progress=False)
    rows, sizes = plan_sizes(cfg, [small, big, gone], MemoryBudget(5_000, explicit=True))
    assert len(rows) == 6 and [len(s.runnable) for s in sizes] == [1, 1]
    by = {(r["pipeline"], r["backend"], r["resolution"]): r for r in rows}
    assert by[("big", "torch", 32)]["status"] == "infeasible" and "memory budget" in by[("big", "torch", 32)]["reason"]
    unavailable = by[("small", "onnxruntime", 64)]
    assert unavailable["status"] == "unavailable" and unavailable["reason"] == "no bundle"
    assert unavailable["total_flops"] == 64 * 64 and unavailable["est_peak_bytes"] is None  # FLOPs of its twin
    assert planned_calls(cfg, sizes) == 2 * (1 + 2)
    # without an explicit budget the free memory bounds the activations only: its weights are loaded already
    _, sizes = plan_sizes(cfg, [big], MemoryBudget(5_000, explicit=False))
    assert [len(s.runnable) for s in sizes] == [0, 0]
    _, sizes = plan_sizes(cfg, [big], MemoryBudget(14_000, explicit=False))
    assert [len(s.runnable) for s in sizes] == [1, 1]
    rows, _ = plan_sizes(SweepConfig(resolutions=(32,), analytic_only=True, progress=False), [small], MemoryBudget(None, False))
    assert rows[0]["status"] == "analytic" and rows[0]["preset"] == "tiny"


def test_budget_plan_is_a_function_of_the_seconds_left_and_the_measurements():
    cheap, dear = Sized("cheap"), Sized("dear", scale=40)
    cfg = SweepConfig(resolutions=(32, 64), repeat=3, warmup=1, progress=False)
    _, sizes = plan_sizes(cfg, [cheap, dear], MemoryBudget(None, False))
    # 1e4 FLOP/s assumed (0.2 of a 5e4 peak): cheap 0.1 / 0.4 s, dear 4 / 16 s at 32² / 64²
    inputs = BudgetInputs(sizes, measured={}, peaks={"fp32": 5e4}, priority={ANY_PRESET: 0, "tiny": 0},
                          repeat=3, warmup=1, skip_slow_warmup=True)
    plan = plan_budget(inputs, 0, sizes[0].runnable, left_s=12.0)
    assert plan.projection(cheap).seconds == pytest.approx(0.1024) and plan.projection(dear).seconds == pytest.approx(4.096)
    assert (plan.allotment(cheap).calls, plan.allotment(dear).calls) == (3, 2)
    assert plan.allotments[(1, id(dear))].calls == 0                # does not fit: reserve for cheap@64 only
    assert plan.reserve_s == pytest.approx(3 * 0.4096)
    assert plan.calls_left() == 3 + 2 + 3
    # after the first round the repeats are projected from the first calls, which are not paid again
    first = {id(dear): FirstCall(("tiny", "dear", "torch", "fp32"), (1024, 40960, 1.0), 1)}
    again = plan_budget(inputs, 0, [(dear, sizes[0].runnable[1][1])], left_s=30.0, first=first)
    assert again.projection(dear).method == "its first call at this size" and again.allotment(dear).calls == 3
    assert again.projections[(1, id(dear))].seconds == pytest.approx(4.0)  # its first call, scaled by FLOPs
    assert again.calls_left() == (3 - 1) + 3 + 3                     # dear's repeats, cheap@64, dear@64
    # a measured median at 32² projects 64² by the FLOPs ratio
    measured = {("tiny", "dear", "torch", "fp32"): [(1024, 40960, 1.0)]}
    later = plan_budget(BudgetInputs(sizes, measured, {"fp32": 5e4}, {"tiny": 0}, 3, 1, True), 1, sizes[1].runnable, 100.0)
    assert later.projection(dear).seconds == pytest.approx(4.0)


def test_over_budget_reason_and_row_statistics():
    assert over_budget_reason(32.0, 3.2, 3.7) == "projected 32.0 s per call, 3 s of the budget left"
    assert "10 s left in all" in over_budget_reason(32.0, 3.0, 10.0)
    runs = [{"Net": 1.0, "total": 1.5}, {"Net": 3.0, "total": 3.5}, {"Net": 2.0, "total": 2.5}]
    assert summary(runs)["total"] == {"median": 2.5, "q25": 2.0, "q75": 3.0, "min": 1.5, "max": 3.5}
    row = {"flops": {"Net": 4.0}}
    finish_row(row, runs, peak=4.0)
    assert row["runs"] == 3 and row["median_s"] == {"Net": 2.0, "total": 2.5}
    assert row["achieved_flops_per_s"] == {"Net": 2.0} and row["peak_fraction"] == {"Net": 0.5}
