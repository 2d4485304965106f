"""``bench --precision int8``: an int8 bundle beside the fp32 one in the same sweep (onnxruntime /
tensorrt); the torch backend has no int8 path and says so; a missing int8 bundle names its flag."""

import importlib.util

import pytest
import torch

from latentfuse.bench.pipelines import Unavailable
from latentfuse.bench.plan import SweepConfig
from latentfuse.bench.sweep import build_pipelines
from latentfuse.model.errors import LatentfuseError


def test_int8_is_a_bench_precision_with_its_own_bundle_flag(tmp_path):
    cfg = SweepConfig(backends=("onnxruntime",), precisions=("fp32", "int8"), progress=False)
    rows = build_pipelines(cfg, None, torch.device("cpu"))
    by = {(p.name, p.precision): p.reason for p in rows if isinstance(p, Unavailable)}
    assert "--bundle-int8" in by[("latent-reg", "int8")] and "--bundle DIR" in by[("latent-reg", "fp32")]
    with pytest.raises(LatentfuseError, match="--bundle-int8 hold one model"):
        SweepConfig(presets=("tiny", "paper"), bundle_int8=str(tmp_path))


def test_torch_backend_has_no_int8_path():
    from latentfuse.model.components import FusionComponents

    comps = FusionComponents.from_preset("tiny", seed=0)
    rows = build_pipelines(SweepConfig(backends=("torch",), precisions=("int8",), progress=False), comps,
                           torch.device("cpu"))
    assert rows and all(isinstance(p, Unavailable) for p in rows)
    assert {p.space for p in rows} == {"latent", "pixel"}
    assert all("onnxruntime / tensorrt" in p.reason for p in rows)


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                    reason="nvidia-modelopt is not installed (pip install 'latentfuse[quant]')")
def test_int8_and_fp32_bundles_in_one_sweep(tmp_path):
    """Both precisions of a tiny model on ONNX Runtime, timed in one run with per-stage times."""
    from latentfuse.bench.sweep import run_sweep
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.quantize import QuantOptions
    from latentfuse.model.components import FusionComponents

    comps = FusionComponents.from_preset("tiny", seed=0)
    model_dir = comps.save_pretrained(tmp_path / "model")
    b32 = export_bundle(model_dir, tmp_path / "b32", heads=["regression"], exporter="torchscript", verify=False,
                        progress=False)
    b8 = export_bundle(model_dir, tmp_path / "b8", heads=["regression"], exporter="torchscript", verify=False,
                       progress=False, precision="int8", quantization=QuantOptions(precision="int8",
                                                                                   calibration_samples=1))
    result = run_sweep(SweepConfig(resolutions=(64,), backends=("onnxruntime",), precisions=("fp32", "int8"),
                                   checkpoint=str(model_dir), bundle=str(b32), bundle_int8=str(b8),
                                   pipelines=("latent-reg",), repeat=1, warmup=0, progress=False, device="cpu",
                                   peak_matmul_n=64))
    rows = {r["precision"]: r for r in result["rows"] if r["pipeline"] == "latent-reg"}
    assert rows["fp32"]["status"] == rows["int8"]["status"] == "ok"
    assert set(rows["int8"]["median_s"]) >= {"VAE-Enc", "T5", "DiT", "VAE-Dec", "total"}
