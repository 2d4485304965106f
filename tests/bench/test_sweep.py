"""The sweep end to end at one tiny size, and its bookkeeping with fake pipelines."""

import json

import pytest

import latentfuse.bench.sweep as sweep_mod
from latentfuse.bench.pipelines import Analytic, BenchPipeline, Unavailable
from latentfuse.bench.report import markdown, write_report
from latentfuse.bench.analysis import fits, speedups
from latentfuse.bench.plan import SweepConfig, image_size, parse_aspect
from latentfuse.bench.sweep import run_sweep
from latentfuse.model.errors import LatentfuseError

PIPELINES = ("latent-reg", "latent-flow-reuse5", "latent-euler2", "nafnet+densefuse", "pixel-dit-reg",
             "pixel-dit-flow-reuse5")


def test_image_size_and_aspect():
    assert image_size(1024, "1:1") == (1024, 1024)
    assert image_size(1024, "16:9") == (576, 1024)
    assert image_size(1024, "9:16") == (1024, 576)
    assert image_size(100, "4:3") == (80, 96)
    with pytest.raises(LatentfuseError, match="16:9"):
        parse_aspect("wide")
    with pytest.raises(LatentfuseError, match="precision"):
        SweepConfig(precisions=("fp8",))


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    # 0.06 GiB sits between the estimates of the latent / pixel-DiT pipelines (~35 / ~14 MiB at 64 px,
    # tiny preset) and NAFNet+DenseFuse (~76 MiB): the latter must be reported as infeasible.
    cfg = SweepConfig(resolutions=(64,), aspects=("1:1",), backends=("torch", "onnxruntime"),
                      precisions=("fp32",), preset="tiny", repeat=2, warmup=1, euler_steps=2, threads=1,
                      memory_budget_gb=0.06, progress=False, device="cpu", peak_matmul_n=256)
    result = run_sweep(cfg)
    out = tmp_path_factory.mktemp("bench")
    return result, write_report(result, out)


def test_sweep_reports_every_pipeline(tiny_sweep):
    result, paths = tiny_sweep
    rows = {(r["pipeline"], r["backend"]): r for r in result["rows"]}
    for name in PIPELINES:
        row = rows[(name, "torch")]
        assert row["total_flops"] > 0 and row["est_peak_bytes"] > 0
    md = paths["markdown"].read_text()
    data = json.loads(paths["json"].read_text())
    for name in PIPELINES:
        assert f"| {name} |" in md
        assert any(r["pipeline"] == name for r in data["rows"])
    assert "random weights" in md and "random weights" in data["meta"]["weights"]
    for key in ("latency_plot", "speedup_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_measures_stages_and_nfe(tiny_sweep):
    result, _ = tiny_sweep
    rows = {(r["pipeline"], r["backend"]): r for r in result["rows"]}
    euler = rows[("latent-euler2", "torch")]
    assert euler["status"] == "ok", euler["reason"]
    assert set(euler["median_s"]) == {"VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail", "total"}
    assert euler["nfe"] == 2 and rows[("latent-flow-reuse5", "torch")]["nfe"] == 5
    assert euler["runs"] == 2 and len(euler["total_s"]) == 2
    lo, hi = euler["iqr_s"]["total"]
    assert lo <= euler["median_s"]["total"] <= hi
    assert 0 < euler["peak_fraction"]["DiT"] < 1.5
    # DiT FLOPs: NFE calls of the same network
    reuse = rows[("latent-flow-reuse5", "torch")]
    assert reuse["flops"]["DiT"] * 2 == euler["flops"]["DiT"] * 5


def test_infeasible_and_unavailable_rows_are_reported(tiny_sweep):
    result, paths = tiny_sweep
    rows = {(r["pipeline"], r["backend"]): r for r in result["rows"]}
    naf = rows[("nafnet+densefuse", "torch")]
    assert naf["status"] == "infeasible" and "budget" in naf["reason"]
    assert naf["est_peak_bytes"] > 0.06 * 2**30 and naf["total_flops"] > 0  # analytic cost still given
    others = [r for r in result["rows"] if r["backend"] == "torch" and r["pipeline"] != "nafnet+densefuse"]
    assert all(r["status"] == "ok" for r in others), [(r["pipeline"], r["reason"]) for r in others]
    ort = rows[("latent-reg", "onnxruntime")]
    assert ort["status"] == "unavailable" and "bundle" in ort["reason"] and ort["total_flops"] > 0
    md = paths["markdown"].read_text()
    assert "infeasible (memory)" in md and "n/a" in md


# ----------------------------------------------------------------------- fake pipelines


class Fake(BenchPipeline):
    space = "pixel"
    stages = ("Net",)

    def __init__(self, name, log, fail=None, space="pixel"):
        super().__init__("torch", "fp32", "cpu")
        self.name, self.log, self.fail, self.space = name, log, fail, space

    def setup(self, a, b):
        self.pixels = a.shape[0] * a.shape[1]

    def run(self):
        self.log.append(self.name)
        if self.fail:
            raise self.fail
        t = 1e-9 * self.pixels ** (1.5 if self.space == "pixel" else 1.0)
        return {"Net": t, "total": t}

    def params(self):
        return {"Net": 1}

    def _analytic_uncached(self, h, w):
        return Analytic(flops={"Net": h * w}, peak_bytes=1)


def test_round_robin_oom_and_fits(monkeypatch):
    log = []
    fakes = [Fake("a", log), Fake("b", log, space="latent"), Fake("c", log, fail=MemoryError("out of memory")),
             Unavailable("d", "latent", "no bundle")]
    for u in fakes[3:]:
        u.backend, u.precision = "onnxruntime", "fp32"
    monkeypatch.setattr(sweep_mod, "load_components", lambda cfg: (None, "random"))
    monkeypatch.setattr(sweep_mod, "build_pipelines", lambda cfg, comp, dev: fakes)
    cfg = SweepConfig(resolutions=(32, 64), repeat=3, warmup=0, progress=False, device="cpu", peak_matmul_n=64)
    result = run_sweep(cfg)
    # round-robin, the start rotating each round; "c" fails on its first call and is not called again
    assert log[:5] == ["a", "b", "c", "b", "a"]
    status = {(r["pipeline"], r["resolution"]): r["status"] for r in result["rows"]}
    assert status[("c", 32)] == "oom" and status[("d", 64)] == "unavailable" and status[("a", 64)] == "ok"
    k = {f["pipeline"]: f["k"] for f in fits(result["rows"])}
    assert k["a"] == pytest.approx(1.5, abs=0.15) and k["b"] == pytest.approx(1.0, abs=0.15)
    sp = speedups(result["rows"])
    assert {s["pipeline"] for s in sp} == {"b"} and all(s["best_pixel"] == "a" for s in sp)
    assert "OOM" in markdown(result)


def test_speedup_against_the_pixel_twin():
    def row(name, space, secs):
        return {"pipeline": name, "space": space, "backend": "torch", "precision": "fp32", "aspect": "1:1",
                "resolution": 512, "status": "ok", "median_s": {"total": secs}}

    rows = [row("nafnet+densefuse", "pixel", 2.0), row("pixel-dit-reg", "pixel", 4.0),
            row("pixel-dit-flow-reuse5", "pixel", 8.0), row("latent-reg", "latent", 0.5),
            row("latent-flow-reuse5", "latent", 1.0), row("latent-euler25", "latent", 4.0)]
    sp = {s["pipeline"]: s for s in speedups(rows)}
    assert sp["latent-reg"]["speedup"] == 4.0 and sp["latent-reg"]["best_pixel"] == "nafnet+densefuse"
    assert sp["latent-reg"]["twin_speedup"] == 8.0 and sp["latent-flow-reuse5"]["twin_speedup"] == 8.0
    assert "twin" not in sp["latent-euler25"] and sp["latent-euler25"]["speedup"] == 0.5


def test_analytic_only_times_nothing(monkeypatch):
    log = []
    monkeypatch.setattr(sweep_mod, "load_components", lambda cfg: (None, "random"))
    monkeypatch.setattr(sweep_mod, "build_pipelines", lambda cfg, comp, dev: [Fake("a", log)])
    result = run_sweep(SweepConfig(resolutions=(32, 64), repeat=1, analytic_only=True, progress=False, device="cpu"))
    assert log == [] and [r["status"] for r in result["rows"]] == ["analytic", "analytic"]
    assert [r["total_flops"] for r in result["rows"]] == [32 * 32, 64 * 64]
    assert "GFLOPs: Net" in markdown(result)


def test_non_torch_backends_without_a_usable_bundle_are_unavailable(tmp_path):
    import torch

    from latentfuse.bench.sweep import build_pipelines

    cfg = SweepConfig(backends=("onnxruntime", "tensorrt"), precisions=("fp32", "fp16"),
                      bundle=str(tmp_path / "missing"), progress=False)
    out = build_pipelines(cfg, None, torch.device("cpu"))
    assert out and all(isinstance(p, Unavailable) and p.space == "latent" for p in out)
    by = {(p.name, p.backend, p.precision): p.reason for p in out}
    assert len(by) == 3 * 2 * 2
    assert "--bundle-fp16" in by[("latent-reg", "onnxruntime", "fp16")]
    assert "not available" in by[("latent-reg", "tensorrt", "fp32")]  # the bundle directory does not exist


def test_unknown_pipeline_names_are_an_error():
    import torch

    from latentfuse.bench.sweep import build_pipelines

    with pytest.raises(LatentfuseError, match="latent-euler25"):
        build_pipelines(SweepConfig(pipelines=("latent-euler7",), backends=("onnxruntime",)), None,
                        torch.device("cpu"))


# ----------------------------------------------------------------------- time budget, several presets


class Clock:
    """The sweep's clock, advanced only by the fake pipelines' calls: deterministic budgets."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Costed(Fake):
    """A fake whose call takes ``base`` s at 32x32 and grows as pixels^k, on a fake clock; its analytic
    FLOPs are 1e4 x its seconds, so the sweep's first projection is exact (see _exact_rate)."""

    def __init__(self, name, log, clock, base, k=1.0, space="pixel", preset_independent=False):
        super().__init__(name, log, space=space)
        self.clock, self.base, self.k = clock, base, k
        self.preset_independent = preset_independent

    def _flops(self, pixels):
        return int(round(1e4 * self.base * (pixels / 1024) ** self.k))

    def run(self):
        self.log.append((getattr(self, "preset", None), self.name, self.pixels))
        t = self._flops(self.pixels) / 1e4
        self.clock.t += t
        return {"Net": t, "total": t}

    def _analytic_uncached(self, h, w):
        return Analytic(flops={"Net": self._flops(h * w)}, peak_bytes=1)


def _exact_rate(monkeypatch, clock):
    from latentfuse.bench.budget import FIRST_CALL_EFFICIENCY

    monkeypatch.setattr(sweep_mod, "_clock", clock)
    # FIRST_CALL_EFFICIENCY x peak = 1e4 FLOP/s: the projection before any measurement is exact
    monkeypatch.setattr(sweep_mod, "matmul_peak_flops", lambda *a, **k: 1e4 / FIRST_CALL_EFFICIENCY)
    monkeypatch.setattr(sweep_mod, "load_components", lambda cfg: (cfg.preset, "random"))


def test_time_budget_cuts_warmup_then_repeats_then_marks_over_budget(monkeypatch, tmp_path):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)
    # cheap: 0.1 s at 32², 0.4 s at 64²; dear: 4 s at 32², 32 s at 64² (k = 1.5); 12 s of budget.
    # Plan at 32²: one call each of cheap@32, cheap@64, dear@32 (4.5 s; dear@64 does not fit), a second
    # each (9 s), cheap's repeats (9.5 s; dear's third does not fit); no warm-up on CPU for a call not yet
    # projected from its own measurements, nor for one over 3 s (dear). 8.3 s later, at 64², 3.7 s are
    # left: cheap (now measured) 1+3, dear over-budget.
    monkeypatch.setattr(sweep_mod, "build_pipelines", lambda cfg, comp, dev: [
        Costed("cheap", log, clock, 0.1, space="latent"), Costed("dear", log, clock, 4.0, k=1.5)])
    cfg = SweepConfig(resolutions=(64, 32), repeat=3, warmup=1, progress=False, device="cpu",
                      time_budget_s=12.0)
    result = run_sweep(cfg)
    rows = {(r["pipeline"], r["resolution"]): r for r in result["rows"]}
    assert len(result["rows"]) == 4  # nothing dropped
    got = {k: (r["status"], r.get("warmup_calls"), r.get("timed_calls")) for k, r in rows.items()}
    assert got[("cheap", 32)] == ("ok", 0, 3) and got[("cheap", 64)] == ("ok", 1, 3)
    assert got[("dear", 32)] == ("ok", 0, 2)
    over = rows[("dear", 64)]
    assert over["status"] == "over-budget" and "median_s" not in over
    assert over["projected_s"] == pytest.approx(32.0) and over["total_flops"] == 320000
    assert over["est_peak_bytes"] == 1 and "projected 32.0 s per call" in over["reason"]
    assert "3 s of the budget left" in over["reason"]
    assert rows[("dear", 32)]["projected_s"] == pytest.approx(4.0)  # projection kept apart from the median
    assert rows[("dear", 32)]["median_s"]["total"] == pytest.approx(4.0)
    assert ("tiny", "dear", 64 * 64) not in log
    assert result["meta"]["time_budget_s"] == 12.0
    assert result["meta"]["wall_s"] == pytest.approx(9.9) and clock.t <= 12.0
    md = markdown(result)
    assert "over budget (time)" in md and "1+3" in md and "0+2" in md and "time budget 0.2 min" in md
    paths = write_report(result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][3]["status"] == "over-budget"


def test_unlimited_budget_times_every_call(monkeypatch):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)
    monkeypatch.setattr(sweep_mod, "build_pipelines", lambda cfg, comp, dev: [
        Costed("cheap", log, clock, 0.1, space="latent"), Costed("dear", log, clock, 4.0, k=1.5)])
    result = run_sweep(SweepConfig(resolutions=(32, 64), repeat=3, warmup=1, progress=False, device="cpu"))
    assert all((r["status"], r["warmup_calls"], r["timed_calls"]) == ("ok", 1, 3) for r in result["rows"])
    assert not any("projected_s" in r for r in result["rows"]) and result["meta"]["time_budget_s"] is None
    assert len(log) == 2 * 2 * 4


def _two_preset_pipelines(log, clock):
    # paper's models are 10x slower; NAFNet+DenseFuse has no preset: tiny's pixel DiT is the fastest pixel
    # pipeline of tiny, NAFNet+DenseFuse the fastest of paper
    def build(cfg, components, device):
        scale = {"tiny": 1.0, "paper": 10.0}[components]
        return [Costed("latent-reg", log, clock, 0.1 * scale, space="latent"),
                Costed("pixel-dit-reg", log, clock, 0.2 * scale, k=1.5),
                Costed("nafnet+densefuse", log, clock, 0.5, k=1.2, preset_independent=True)]
    return build


def test_two_presets_share_the_preset_free_competitor(monkeypatch, tmp_path):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)
    monkeypatch.setattr(sweep_mod, "build_pipelines", _two_preset_pipelines(log, clock))
    cfg = SweepConfig(resolutions=(32, 64), presets=("tiny", "paper"), repeat=2, warmup=0, progress=False,
                      device="cpu")
    assert cfg.preset == "tiny"
    result = run_sweep(cfg)
    keys = sorted((r["preset"], r["pipeline"], r["resolution"]) for r in result["rows"])
    assert keys == sorted([(p, n, s) for p in ("tiny", "paper") for n in ("latent-reg", "pixel-dit-reg")
                           for s in (32, 64)] + [("any", "nafnet+densefuse", s) for s in (32, 64)])
    # timed once per size (2 calls each), not once per preset
    assert sum(1 for e in log if e[1] == "nafnet+densefuse") == 2 * 2
    sp = {(s["preset"], s["resolution"]): s for s in speedups(result["rows"]) if s["pipeline"] == "latent-reg"}
    assert set(sp) == {(p, s) for p in ("tiny", "paper") for s in (32, 64)}
    assert sp[("tiny", 32)]["best_pixel"] == "pixel-dit-reg" and sp[("tiny", 32)]["speedup"] == pytest.approx(2.0)
    assert sp[("paper", 32)]["best_pixel"] == "nafnet+densefuse"
    assert sp[("paper", 32)]["speedup"] == pytest.approx(0.5)
    assert sp[("paper", 32)]["twin_speedup"] == pytest.approx(2.0)  # paper's own pixel DiT, not tiny's
    k = {(f["preset"], f["pipeline"]): f["k"] for f in fits(result["rows"])}
    assert k[("paper", "pixel-dit-reg")] == pytest.approx(1.5, abs=0.01)
    assert k[("any", "nafnet+densefuse")] == pytest.approx(1.2, abs=0.01)
    heads = {h["preset"]: h for h in result["headline"]}
    assert heads["tiny"]["resolution"] == 64 and heads["paper"]["best_pixel"] == "nafnet+densefuse"
    assert set(result["params"]) == {"tiny", "paper", "any"} and result["meta"]["presets"] == ["tiny", "paper"]
    paths = write_report(result, tmp_path)
    md = paths["markdown"].read_text()
    assert "### preset tiny" in md and "### preset paper" in md and "nafnet+densefuse (any)" in md
    assert "paper claims (MMAIF Table 5" in md and "3.3x" in md and "preset paper [torch/fp32, 1:1]" in md
    assert paths["latency_plot"].read_bytes()[:4] == b"\x89PNG"


def test_two_presets_share_one_budget_in_order(monkeypatch):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)
    monkeypatch.setattr(sweep_mod, "build_pipelines", _two_preset_pipelines(log, clock))
    # tiny + NAFNet, one call each at both sizes: 0.1+0.2+0.5 + 0.4+1.6+2.64 = 5.44 s; paper's calls:
    # latent-reg 1 s / 4 s, pixel DiT 2 s / 16 s at 32² / 64²: of 7 s paper gets its 32² latent-reg only
    cfg = SweepConfig(resolutions=(32, 64), presets=("tiny", "paper"), repeat=1, warmup=0, progress=False,
                      device="cpu", time_budget_s=7.0)
    result = run_sweep(cfg)
    status = {(r["preset"], r["pipeline"], r["resolution"]): r["status"] for r in result["rows"]}
    assert all(s == "ok" for (p, _, _), s in status.items() if p in ("tiny", "any"))
    assert status[("paper", "latent-reg", 32)] == "ok" and status[("paper", "pixel-dit-reg", 32)] == "over-budget"
    assert status[("paper", "latent-reg", 64)] == "over-budget"
    assert status[("paper", "pixel-dit-reg", 64)] == "over-budget"
    assert len(result["rows"]) == 10 and clock.t <= 7.0
    heads = {h["preset"]: h for h in result["headline"]}
    assert heads["paper"]["resolution"] == 32 and heads["paper"]["largest_status"] == "over-budget"
    assert [m["pipeline"] for m in heads["paper"]["pixel_not_measured"]] == ["pixel-dit-reg"]
    assert "not measured at that size: pixel-dit-reg (over budget (time), projected 2.0 s)" in markdown(result)
    assert "over budget (time)" in markdown(result)


def test_repeats_are_replanned_after_the_first_round(monkeypatch):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)

    class Slow(Costed):  # its analytic FLOPs promise 0.1 s, a call takes 1 s
        def _analytic_uncached(self, h, w):
            return Analytic(flops={"Net": self._flops(h * w) // 10}, peak_bytes=1)

    monkeypatch.setattr(sweep_mod, "build_pipelines", lambda cfg, comp, dev: [Slow("slow", log, clock, 1.0)])
    result = run_sweep(SweepConfig(resolutions=(32,), repeat=3, warmup=0, progress=False, device="cpu",
                                   time_budget_s=2.5))
    (row,) = result["rows"]
    # planned 3 x 0.1 s; after the first call (1 s) 1.5 s are left: one more call, re-planned, not cut short
    assert row["projected_s"] == pytest.approx(0.1)
    assert (row["planned_calls"], row["timed_calls"], row["reason"]) == (2, 2, "")
    assert clock.t == pytest.approx(2.0)


def test_a_wrong_guess_does_not_spend_the_later_presets_seconds(monkeypatch):
    clock, log = Clock(), []
    _exact_rate(monkeypatch, clock)

    class Slow(Costed):  # analytic FLOPs promise a tenth of the real time (a small model on CPU)
        def _analytic_uncached(self, h, w):
            return Analytic(flops={"Net": self._flops(h * w) // 10}, peak_bytes=1)

    def build(cfg, components, device):
        cls = Slow if components == "tiny" else Costed
        return [cls("latent-reg", log, clock, 1.0, space="latent")]

    monkeypatch.setattr(sweep_mod, "build_pipelines", build)
    # first plan (guesses): tiny 0.1 + 0.4 s, paper 1 + 4 s: all fits in 5.8 s. tiny's first call takes
    # 1 s, so tiny at 64² now projects 4 s: paper's 32² call is re-planned away before it runs,
    # instead of leaving tiny's 64² call without seconds
    cfg = SweepConfig(resolutions=(32, 64), presets=("tiny", "paper"), repeat=1, warmup=0, progress=False,
                      device="cpu", time_budget_s=5.8)
    rows = {(r["preset"], r["resolution"]): r for r in run_sweep(cfg)["rows"]}
    assert rows[("tiny", 32)]["status"] == "ok" and rows[("tiny", 64)]["status"] == "ok"
    assert rows[("paper", 32)]["status"] == "over-budget" and "projected 1.0 s per call" in rows[("paper", 32)]["reason"]
    assert rows[("paper", 64)]["status"] == "over-budget"
    assert clock.t == pytest.approx(5.0)
