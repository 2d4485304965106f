"""INT8 of the fifth graph, the fidelity decoder (model.fidelity), by ``--quant-graphs fidelity``: its calibration
inputs recorded from the pipeline's own calls (the decoded image, the pair in model range, the prompt), the
bundle's manifest and checks, the bundle on ONNX Runtime close to FP32, ``--quant-target onnxruntime`` keeping
FP32 the layers ONNX Runtime's CPU provider would run dequantized (all of them, on this network), and the
option's one-line errors. Tiny preset, a perturbed decoder (an untrained one is the identity), small pairs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError

MODELOPT = importlib.util.find_spec("modelopt") is not None
requires_modelopt = pytest.mark.skipif(
    not MODELOPT, reason="nvidia-modelopt is not installed (pip install 'latentfuse[quant]'; make test installs it)")
SIZE = (48, 64)                    # H, W of the fixture pairs: the fidelity decoder runs at 48x64


def _write_pairs(root: Path, n: int = 3, seed: int = 0) -> Path:
    """``root/vi`` (RGB) + ``root/ir`` (gray) smooth random pairs: the layout of MSRS / TNO."""
    from scipy.ndimage import gaussian_filter

    from latentfuse.model.image_io import write_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        vi = gaussian_filter(rng.random((*SIZE, 3)), (2, 2, 0))
        ir = gaussian_filter(rng.random(SIZE), 2)
        write_image(root / "vi" / f"{i:02d}.png", ((vi - vi.min()) / (np.ptp(vi) + 1e-6)).astype(np.float32))
        write_image(root / "ir" / f"{i:02d}.png", ((ir - ir.min()) / (np.ptp(ir) + 1e-6)).astype(np.float32))
    return root


def _components(perturb):
    from latentfuse.model.components import FusionComponents

    return perturb(FusionComponents.from_preset("tiny", heads=("regression",), seed=0, fidelity=True))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def fidelity_bundles(tmp_path_factory, pairs, fidelity_perturbed):
    """One model, exported int8 with only its fidelity graph quantized, for each target."""
    if not MODELOPT:
        pytest.skip("nvidia-modelopt is not installed (pip install 'latentfuse[quant]')")
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.quantize import QuantOptions

    root = tmp_path_factory.mktemp("int8-fidelity")
    comps = _components(fidelity_perturbed)
    model_dir = comps.save_pretrained(root / "model")
    out = {"components": comps, "model_dir": model_dir}
    for target in ("tensorrt", "onnxruntime"):
        reports = []
        options = QuantOptions(precision="int8", graphs=("fidelity",), target=target, calibration_samples=2,
                               calibration_data=(f"vif={pairs}",))
        bundle = export_bundle(model_dir, root / target, precision="int8", exporter="torchscript", lint=False,
                               progress=False, on_report=reports.append, quantization=options)
        out[target] = {"bundle": bundle, "report": reports[0]}
    return out


# ----------------------------------------------------------------------------- calibration inputs
def test_calibration_records_the_fidelity_calls(pairs, fidelity_perturbed):
    from latentfuse.calibration.quant_inputs import calibration_inputs, parse_source

    comps = _components(fidelity_perturbed)
    recorded = calibration_inputs(comps, ["regression"], sources=[parse_source(f"vif={pairs}")], samples=2,
                                  progress=False)
    feeds = recorded.feeds["fidelity"]
    assert len(feeds) == 2 and recorded.provenance()["feeds"]["fidelity"] == 2
    for feed, decoded in zip(feeds, recorded.feeds["vae_decoder"]):
        assert set(feed) == {"image", "source_a", "source_b", "prompt_embeds", "prompt_mask"}
        image = feed["image"]
        assert image.dtype == np.float32 and image.shape[:2] == (1, 3)
        assert image.shape[2] % 16 == image.shape[3] % 16 == 0
        assert feed["source_a"].shape == feed["source_b"].shape == image.shape
        assert feed["prompt_mask"].dtype == np.int64 and feed["prompt_embeds"].shape[:2] == feed["prompt_mask"].shape
        assert -1.01 <= float(feed["source_a"].min()) and float(feed["source_a"].max()) <= 1.01     # model range
        assert not np.array_equal(feed["source_a"], feed["source_b"])


def test_fidelity_layers_and_roles(fidelity_perturbed):
    from latentfuse.export.graphs import graph_specs
    from latentfuse.export.quantize import candidate_layers

    comps = _components(fidelity_perturbed)
    module = graph_specs(comps, ["regression"])["fidelity"].module(comps)
    roles = candidate_layers(module, "all-linear")
    assert roles["fidelity.film"] == "adaln" and roles["fidelity.head"] == "conv"
    assert roles["fidelity.mid.0.conv2"] == "conv" and roles["fidelity.stem"] == "conv"
    assert set(candidate_layers(module, "conv")) == set(roles) - {"fidelity.film"}


# ----------------------------------------------------------------------------- the int8 bundle
@requires_modelopt
def test_fidelity_int8_bundle_manifest_and_checks(fidelity_bundles, pairs):
    from latentfuse.runtime.manifest import load_manifest

    manifest = load_manifest(fidelity_bundles["tensorrt"]["bundle"])
    graphs = manifest["graphs"]
    assert {n: e["precision"] for n, e in graphs.items()} == {
        "text_encoder": "fp32", "vae_encoder": "fp32", "vae_decoder": "fp32", "dit_regression": "fp32",
        "fidelity": "int8"}
    assert manifest["quantization"]["graphs"] == ["fidelity"]
    assert manifest["quantization"]["calibration"]["feeds"]["fidelity"] == 2
    entry = graphs["fidelity"]
    q = entry["quantization"]
    assert entry["exporter"] == "torchscript" and entry["halo"] > 0 and entry["opset"] >= 19
    assert q["policy"] == "quantized" and q["target"] == "tensorrt" and q["calibration_rows"] == 2
    assert set(q["quantized_layers"]) | set(q["excluded_layers"]) == set(q["sensitivity"])
    assert len(q["quantized_layers"]) > q["candidates"] // 2
    assert q["error"]["fake_quant_vs_fp32"]["rel_rms"] <= q["tolerance"]["graph"]
    assert q["error"]["onnxruntime_vs_fp32"]["rel_rms"] <= q["tolerance"]["graph"]
    assert all(r["passed"] for r in q["parity_vs_fake_quant"]["rows"])
    assert "integer_layers" in q["onnxruntime_cpu"] and "dequantized_layers" in q["onnxruntime_cpu"]
    report = fidelity_bundles["tensorrt"]["report"]
    assert report.ok, report.failures()
    checks = {(c.graph, c.check): c.status for c in report.checks}
    for check in ("onnx.checker (full)", "symbolic dims", "no data-dep. shapes", "TensorRT ops", "parity (fake quant)"):
        assert checks[("fidelity", check)] == "pass", check


@requires_modelopt
def test_fidelity_int8_bundle_runs_on_onnxruntime_close_to_fp32(fidelity_bundles, pairs):
    from latentfuse.export.verify import verify_bundle
    from latentfuse.runtime.backends.torch_backend import TorchBackend
    from latentfuse.runtime.pipeline import Pipeline

    bundle = fidelity_bundles["tensorrt"]["bundle"]
    pipe = Pipeline.from_bundle(bundle, backend="onnxruntime")
    fp32 = Pipeline(TorchBackend(fidelity_bundles["components"], device="cpu"))
    a, b = pairs / "vi" / "00.png", pairs / "ir" / "00.png"
    out = pipe(a, b, task="vif", mode="regression", seed=0)
    ref = fp32(a, b, task="vif", mode="regression", seed=0)
    assert out.info["fidelity"] == 1.0 and out.image.shape[:2] == SIZE and np.isfinite(out.image).all()
    mse = float(np.mean((out.image.astype(np.float64) - ref.image) ** 2))
    assert 10 * np.log10(1.0 / max(mse, 1e-12)) > 35.0          # the fused image, INT8 fidelity vs FP32 torch
    # export --verify: the graph against FP32 on its re-recorded calibration inputs, and fused images
    report = verify_bundle(bundle, components=fidelity_bundles["components"], lint=False, progress=False,
                           accuracy=True, held_out=1)
    assert [r.graph for r in report.accuracy] == ["fidelity"]
    assert all(r.passed and r.rows == 2 and r.rel_rms <= r.bound for r in report.accuracy)
    assert report.fusion and all(f.psnr_db > 35 for f in report.fusion)


@requires_modelopt
def test_onnxruntime_target_keeps_the_fidelity_graph_fp32(fidelity_bundles):
    """ONNX Runtime's CPU provider runs a Conv as QLinearConv only when its output is quantized too: no layer
    of the fidelity decoder stays integer, so the ONNX Runtime target keeps it FP32, each exclusion said."""
    from latentfuse.runtime.manifest import load_manifest

    entry = load_manifest(fidelity_bundles["onnxruntime"]["bundle"])["graphs"]["fidelity"]
    q = entry["quantization"]
    assert entry["precision"] == "fp32" and q["policy"] == "fp32" and q["target"] == "onnxruntime"
    assert not q["quantized_layers"] and len(q["excluded_layers"]) == q["candidates"]
    assert all("ONNX Runtime's CPU provider" in why for why in q["excluded_layers"].values())
    assert fidelity_bundles["onnxruntime"]["report"].ok


# ----------------------------------------------------------------------------- bad options
def test_quant_graphs_names_fidelity_among_the_kinds():
    from latentfuse.export.quantize import QUANTIZABLE_KINDS, QuantOptions

    assert "fidelity" in QUANTIZABLE_KINDS and QuantOptions(graphs=("dit", "fidelity")).graphs == ("dit", "fidelity")
    with pytest.raises(LatentfuseError, match=r"must be among dit, vae_encoder, vae_decoder, fidelity, got fidelty"):
        QuantOptions(graphs=("fidelty",))


def test_quant_graphs_fidelity_on_a_model_without_one_is_one_line(capsys, tmp_path):
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.cli import main

    model_dir = FusionComponents.from_preset("tiny", heads=("regression",)).save_pretrained(tmp_path / "model")
    capsys.readouterr()                      # (the save's progress bar)
    assert main(["export", "--checkpoint", str(model_dir), "--out", str(tmp_path / "b"), "--precision", "int8",
                 "--quant-graphs", "dit,fidelity"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no fidelity decoder" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert main(["export", "--out", str(tmp_path / "b"), "--precision", "int8", "--quant-graphs", "fidelity,vae"]) == 2
    err = capsys.readouterr().err.strip()
    assert "quantized graphs must be among" in err and "got vae" in err and "\n" not in err


@requires_modelopt
def test_export_bundle_refuses_fidelity_for_a_model_without_one(tmp_path, pairs):
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.quantize import QuantOptions
    from latentfuse.model.components import FusionComponents

    model_dir = FusionComponents.from_preset("tiny", heads=("regression",)).save_pretrained(tmp_path / "model")
    options = QuantOptions(graphs=("dit", "fidelity"), calibration_samples=1, calibration_data=(f"vif={pairs}",))
    with pytest.raises(LatentfuseError, match="the model has no graph of kind fidelity to quantize"):
        export_bundle(model_dir, tmp_path / "bundle", precision="int8", exporter="torchscript", lint=False,
                      progress=False, quantization=options)
    assert not (tmp_path / "bundle").exists()
