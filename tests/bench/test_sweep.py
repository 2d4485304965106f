"""The sweep end to end at one tiny size, and its bookkeeping with fake pipelines."""

import json

import pytest

import bench.sweep as sweep_mod
from bench.pipelines import Analytic, BenchPipeline, Unavailable
from bench.report import markdown, write_report
from bench.sweep import SweepConfig, fits, image_size, parse_aspect, run_sweep, speedups
from model.errors import LatentfuseError

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
    assert set(euler["median_s"]) == {"VAE-Enc", "T5", "DiT", "VAE-Dec", "total"}
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

    from bench.sweep import build_pipelines

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

    from bench.sweep import build_pipelines

    with pytest.raises(LatentfuseError, match="latent-euler25"):
        build_pipelines(SweepConfig(pipelines=("latent-euler7",), backends=("onnxruntime",)), None,
                        torch.device("cpu"))
