"""The time-budget planner and the per-call projections (bench.budget)."""

import pytest

from latentfuse.bench.budget import Call, plan_calls, project_from_rate, project_own


def test_plan_gives_everything_when_the_budget_is_ample():
    calls = [Call("a", 0, 0.5), Call("b", 0, 1.0)]
    plan = plan_calls(calls, left_s=100.0, repeat=3, warmup=2, skip_slow_warmup=False)
    assert [(plan[k].warmup, plan[k].calls) for k in "ab"] == [(2, 3), (2, 3)]


def test_plan_cuts_warmup_then_repeats_then_marks_over_budget():
    # a: 1 s, b: 2 s, c: 50 s per call; 9 s left
    calls = [Call("a", 0, 1.0), Call("b", 0, 2.0), Call("c", 0, 50.0)]
    plan = plan_calls(calls, left_s=9.0, repeat=3, warmup=1, skip_slow_warmup=False)
    # coverage: a, b (3 s; c does not fit: over-budget) -> spread: a, b (6 s) -> repeats: a (7 s), b (9 s)
    # -> no seconds for any warm-up
    assert (plan["a"].warmup, plan["a"].calls) == (0, 3)
    assert (plan["b"].warmup, plan["b"].calls) == (0, 3)
    assert plan["c"].calls == 0 and plan["c"].free_s == pytest.approx(6.0)
    plan = plan_calls(calls, left_s=5.0, repeat=3, warmup=1, skip_slow_warmup=False)
    # coverage a, b (3 s), a second call for a (4 s; b's does not fit), a's third (5 s)
    assert (plan["a"].calls, plan["b"].calls, plan["c"].calls) == (3, 1, 0)
    total = sum(plan[k].cost(c.seconds) for k, c in zip("abc", calls))
    assert total <= 5.0


def test_plan_skips_the_warmup_of_slow_calls_on_cpu():
    calls = [Call("fast", 0, 0.5), Call("slow", 0, 4.0)]
    plan = plan_calls(calls, left_s=1000.0, repeat=2, warmup=1, skip_slow_warmup=True)
    assert (plan["fast"].warmup, plan["slow"].warmup) == (1, 0)
    assert plan["slow"].calls == 2


def test_plan_serves_presets_in_order():
    # the second preset's cheap call only gets what the first preset's calls leave
    calls = [Call("paper", 1, 1.0), Call("tiny", 0, 5.0)]
    plan = plan_calls(calls, left_s=5.5, repeat=3, warmup=1)
    assert plan["tiny"].calls == 1 and plan["paper"].calls == 0
    plan = plan_calls(calls, left_s=6.5, repeat=3, warmup=1)
    assert plan["tiny"].calls == 1 and plan["paper"].calls == 1


def test_projection_from_own_points_and_rates():
    one = project_own([(1000, 10, 2.0)], 4000, 80)
    assert one.seconds == pytest.approx(16.0) and "FLOPs" in one.method
    two = project_own([(1000, 10, 1.0), (4000, 80, 8.0)], 16000, None)  # k = 1.5
    assert two.seconds == pytest.approx(64.0) and "1.50" in two.method
    wild = project_own([(1000, 10, 1.0), (2000, 20, 100.0)], 4000, None)  # noisy pair: k clamped to 2.5
    assert wild.seconds == pytest.approx(100.0 * 2 ** 2.5)
    assert project_own([], 1000, 10) is None
    rate = project_from_rate(4e9, 2e9, "test")
    assert rate.seconds == pytest.approx(2.0) and "2.0 GFLOP/s" in rate.method
