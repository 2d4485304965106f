"""INT8 / FP8 post-training quantization (export.quantize): a tiny model exported to int8 and fp8
bundles calibrated on generated fixture pairs; Q/DQ nodes where the measured plan quantizes and none
where it excludes; ONNX Runtime against ModelOpt's fake-quantized PyTorch model; the bundle checks
(ONNX checker, TensorRT op table with input types, no data-dependent shapes); FP8 refused on an SM 8.7
(Jetson Orin) profile; the error without ModelOpt; int8 bundles through the ordinary runtime."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from latentfuse.export.engines import check_precision_support
from latentfuse.model.errors import LatentfuseError, MissingDependencyError

MODELOPT = importlib.util.find_spec("modelopt") is not None
requires_modelopt = pytest.mark.skipif(
    not MODELOPT, reason="nvidia-modelopt is not installed (pip install 'latentfuse[quant]'; make test installs it)")
# ONNX Runtime output vs ModelOpt's fake-quantized PyTorch model, relative RMS over the calibration
# inputs: both compute the same quantized values; they differ where a value lies on a rounding
# boundary (float summation order) and by int32 vs float accumulation. Measured ~3e-4 (int8), 6e-6 (fp8).
ORT_VS_FAKE_QUANT = 2e-3


def tiny_components(depth: int = 1):
    """The tiny preset with one-block DiTs whose zero-initialised gates / output layer are perturbed."""
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT

    comps = FusionComponents.from_preset("tiny", seed=0)
    gen = torch.Generator().manual_seed(1)
    for head in list(comps.dits):
        cfg = DiTConfig.from_preset("tiny", head=head, depth=depth, text_dim=comps.text_encoder.hidden_size)
        dit = MoEDiT(cfg).eval()
        with torch.no_grad():
            for p in dit.parameters():
                if torch.count_nonzero(p) == 0:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        comps.dits[head] = dit
    return comps


def write_pairs(root: Path, n: int = 4, size=(80, 96), seed: int = 0) -> Path:
    """``root/vi`` (RGB) + ``root/ir`` (gray) smooth random pairs: the layout of MSRS / TNO."""
    from scipy.ndimage import gaussian_filter

    from latentfuse.model.image_io import write_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        base = gaussian_filter(rng.random((*size, 3)), (3, 3, 0))
        base = (base - base.min()) / (np.ptp(base) + 1e-6)
        ir = gaussian_filter(rng.random(size), 2)
        ir = (ir - ir.min()) / (np.ptp(ir) + 1e-6)
        write_image(root / "vi" / f"{i:02d}.png", base.astype(np.float32))
        write_image(root / "ir" / f"{i:02d}.png", ir.astype(np.float32))
    return root


@pytest.fixture(scope="module")
def fixture_pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, fixture_pairs):
    if not MODELOPT:
        pytest.skip("nvidia-modelopt is not installed (pip install 'latentfuse[quant]')")
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.quantize import QuantOptions

    root = tmp_path_factory.mktemp("int8")
    comps = tiny_components()
    model_dir = comps.save_pretrained(root / "model")
    reports = []
    options = QuantOptions(precision="int8", calibration_samples=3, calibration_data=(f"vif={fixture_pairs}",))
    bundle = export_bundle(model_dir, root / "bundle", precision="int8", exporter="torchscript", lint=False,
                           progress=False, on_report=reports.append, quantization=options)
    return {"bundle": bundle, "components": comps, "model_dir": model_dir, "report": reports[0]}


# ----------------------------------------------------------------------------- the int8 bundle
@requires_modelopt
def test_int8_bundle_manifest(int8_bundle, fixture_pairs):
    from latentfuse.runtime.manifest import load_manifest

    manifest = load_manifest(int8_bundle["bundle"])
    graphs = manifest["graphs"]
    assert {n: e["precision"] for n, e in graphs.items()} == {
        "text_encoder": "fp32", "vae_encoder": "fp32", "vae_decoder": "fp32", "dit_flow": "int8",
        "dit_regression": "int8"}
    for name in ("dit_flow", "dit_regression"):
        q = graphs[name]["quantization"]
        assert graphs[name]["exporter"] == "torchscript" and graphs[name]["opset"] >= 19
        assert q["precision"] == "int8" and q["level"] == "all-linear" and q["policy"] == "quantized"
        assert set(q["quantized_layers"]) | set(q["excluded_layers"]) == set(q["sensitivity"])
        assert len(q["sensitivity"]) == q["candidates"] > 0
        assert q["error"]["fake_quant_vs_fp32"]["rel_rms"] <= q["tolerance"]["graph"]
        assert q["error"]["onnxruntime_vs_fake_quant"]["rel_rms"] <= ORT_VS_FAKE_QUANT
        assert q["onnxruntime_cpu"]["integer_kernels"], "ONNX Runtime ran no layer as an integer kernel"
        rows = q["parity_vs_fake_quant"]["rows"]
        assert len(rows) == 3 and all(r["passed"] and r["rel_rms"] <= ORT_VS_FAKE_QUANT for r in rows)
    calib = manifest["quantization"]["calibration"]
    assert manifest["quantization"]["precision"] == "int8"
    assert calib["sources"] == [f"vif={Path(fixture_pairs).resolve()}"] and calib["samples"] == 3
    assert all(p.startswith(f"vif:{Path(fixture_pairs).name}/") for p in calib["pairs"])
    assert calib["flow_timesteps"] == [0.0, 0.2, 0.4, 0.6, 0.8]      # the default sampler's 5 steps
    assert calib["feeds"]["dit_flow"] == 5 * 3 and calib["feeds"]["dit_regression"] == 3
    assert int8_bundle["report"].ok


@requires_modelopt
def test_int8_bundle_passes_the_bundle_checks(int8_bundle):
    report = int8_bundle["report"]
    checks = {(c.graph, c.check): c.status for c in report.checks}
    for graph in ("dit_flow", "dit_regression"):
        for check in ("onnx.checker (full)", "symbolic dims", "no data-dep. shapes", "TensorRT ops",
                      "parity (fake quant)"):
            assert checks[(graph, check)] == "pass", (graph, check)
    # FP32 graphs: parity against PyTorch; quantized ones against their fake-quantized model (at export)
    assert {r.graph for r in report.parity} == {"text_encoder", "vae_encoder", "vae_decoder"}
    assert all(r.passed for r in report.parity)


@requires_modelopt
def test_int8_bundle_runs_through_the_runtime(int8_bundle, fixture_pairs, tmp_path):
    from latentfuse.runtime.cli import main
    from latentfuse.runtime.pipeline import Pipeline

    pipe = Pipeline.from_bundle(int8_bundle["bundle"], backend="onnxruntime")
    a, b = fixture_pairs / "vi" / "00.png", fixture_pairs / "ir" / "00.png"
    for mode in ("flow", "regression"):
        result = pipe(a, b, task="vif", mode=mode)
        assert result.image.shape[:2] == (80, 96) and np.isfinite(result.image).all()
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a), str(b), "--task", "vif", "--bundle", str(int8_bundle["bundle"]), "-o", str(out)]) == 0
    assert out.is_file()


@requires_modelopt
def test_verify_reports_quantization_accuracy(int8_bundle):
    from latentfuse.export.verify import verify_bundle

    report = verify_bundle(int8_bundle["bundle"], components=int8_bundle["components"], lint=False,
                           progress=False, accuracy=True, held_out=1)
    assert {r.graph for r in report.accuracy} == {"dit_flow", "dit_regression"}
    assert all(r.passed and r.rows > 0 for r in report.accuracy)
    assert {(f.task, f.head) for f in report.fusion} == {("vif", "flow"), ("vif", "regression")}
    assert all(f.psnr_db > 20 and abs(f.qabf_change) < 0.2 for f in report.fusion)
    text = report.format()
    assert "calibration inputs" in text and "PSNR" in text


# ----------------------------------------------------------------------------- one graph, by hand
def _dit_graph(precision, level="all-linear"):
    from latentfuse.calibration.quant_inputs import calibration_inputs
    from latentfuse.export.graphs import graph_specs
    from latentfuse.export.quantize import QuantizedGraph, torch_feeds

    comps = tiny_components()
    recorded = calibration_inputs(comps, ["regression"], samples=2, progress=False)
    spec = graph_specs(comps, ["regression"])["dit_regression"]
    batches = torch_feeds(spec, recorded.feeds["dit_regression"])
    return QuantizedGraph(spec, spec.module(comps), precision, level, batches)


@requires_modelopt
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_nodes_where_the_plan_says_and_ort_matches_fake_quant(precision, tmp_path):
    from latentfuse.export.checks import find_data_dependent_shapes, unsupported_trt_ops, unsupported_trt_types
    from latentfuse.export.quantize import (choose_layers, export_quantized, graph_quantized_layers, ort_outputs,
                                            ort_session)
    from latentfuse.export.quantize.stats import ErrorSum

    graph = _dit_graph(precision, level="qkv")
    assert set(graph.candidates.values()) <= {"conv", "ffn", "qkv", "attn_out"}
    # a layer tolerance at the median sensitivity excludes about half the candidates, by measurement
    probe = choose_layers(graph, 1.0, 1.0)
    median = float(np.median(list(probe.sensitivity.values())))
    plan = choose_layers(graph, median, 1.0)
    assert plan.excluded and plan.quantized
    assert all(probe.sensitivity[n] >= median for n in plan.excluded)     # (sensitivities are rounded)
    result = export_quantized(graph, tmp_path, opset=20)
    onnx.checker.check_model(str(result.path), full_check=True)
    in_graph = graph_quantized_layers(str(result.path))
    assert set(in_graph) == set(plan.quantized)
    assert all(v["weight"] == precision and v["activation"] for v in in_graph.values())
    model = onnx.load(str(result.path), load_external_data=False)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    for name in plan.excluded:               # excluded: FP32 weights, no DequantizeLinear reads them
        assert inits.get(f"{name}.weight", onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT
    not_candidates = [n for n, m in graph.fp32.named_modules() if isinstance(m, torch.nn.Linear)
                      and n not in graph.candidates]
    assert not_candidates and not set(not_candidates) & set(in_graph)       # adaln, embeddings, router, ...
    wanted = {"int8": onnx.TensorProto.INT8, "fp8": onnx.TensorProto.FLOAT8E4M3FN}[precision]
    qtypes = {inits.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in inits and inits[n.input[0]] != onnx.TensorProto.FLOAT}
    assert qtypes == {wanted}
    assert not unsupported_trt_ops(model) and not unsupported_trt_types(model)
    assert not find_data_dependent_shapes(model)
    # ONNX Runtime (FP8: its CPU provider's FP8 Q/DQ kernels, FP32 arithmetic) vs ModelOpt's fake quant
    session = ort_session(result.path)
    outs = ort_outputs(session, graph.spec, graph.batches)
    acc = ErrorSum()
    with torch.no_grad():
        for y, args in zip(outs, graph.batches):
            acc.add(y, graph.model(*args).numpy())
    assert acc.stats().rel_rms <= ORT_VS_FAKE_QUANT
    # and the quantized graph still computes the FP32 graph's output, approximately
    fp32 = ErrorSum()
    for y, ref in zip(outs, graph.references):
        fp32.add(y, ref)
    assert fp32.stats().rel_rms < 0.1


@requires_modelopt
def test_onnxruntime_target_keeps_dequantized_layers_fp32(tmp_path):
    from latentfuse.export.quantize import choose_layers, export_quantized, ort_kernel_report
    from latentfuse.export.quantize.bundle_step import _keep_cpu_dequantized_fp32

    graph = _dit_graph("int8")
    plan = choose_layers(graph, 1.0, 1.0)
    first = export_quantized(graph, tmp_path, opset=20)
    before = ort_kernel_report(first.path, plan.quantized)
    assert before["dequantized_layers"] and before["integer_layers"]      # the NAF convolutions, 2-D Gemms
    result = _keep_cpu_dequantized_fp32(graph, plan, first, tmp_path, 20, log=lambda s: None)
    after = ort_kernel_report(result.path, plan.quantized)
    assert not after["dequantized_layers"] and set(after["integer_layers"]) == set(plan.quantized)
    dropped = plan.steps[-1]["excluded_for_target"]
    assert set(before["dequantized_layers"]) <= set(dropped)   # (+ convolutions that fed them as QLinearConv)
    for name in dropped:
        assert name not in plan.quantized and "ONNX Runtime's CPU provider" in plan.excluded[name]


@requires_modelopt
def test_measured_exclusions_bring_the_graph_under_its_tolerance():
    from latentfuse.export.quantize import choose_layers

    graph = _dit_graph("int8")
    free = choose_layers(graph, 1.0, 1.0)
    tight = 0.5 * free.error.rel_rms
    plan = choose_layers(graph, 1.0, tight)
    assert plan.error.rel_rms <= tight or not plan.quantized
    steps = [s for s in plan.steps if "excluded" in s]
    assert steps and all("graph error" in plan.excluded[s["excluded"]] for s in steps)
    # exclusions go most sensitive first
    sens = [free.sensitivity[s["excluded"]] for s in steps]
    assert sens == sorted(sens, reverse=True)


@requires_modelopt
def test_fp8_bundle_passes_the_bundle_checks(tmp_path, fixture_pairs):
    from latentfuse.export.bundle import export_bundle
    from latentfuse.export.quantize import QuantOptions
    from latentfuse.runtime.manifest import load_manifest

    comps = tiny_components()
    model_dir = comps.save_pretrained(tmp_path / "model")
    reports = []
    bundle = export_bundle(model_dir, tmp_path / "bundle", heads=["regression"], precision="fp8", exporter="torchscript",
                           lint=False, progress=False, on_report=reports.append,
                           quantization=QuantOptions(precision="fp8", calibration_samples=2,
                                                     calibration_data=(f"vif={fixture_pairs}",)))
    report = reports[0]
    assert report.ok, report.failures()
    rows = [c for c in report.checks if c.graph == "dit_regression"]
    assert {c.check for c in rows if c.status == "pass"} >= {"onnx.checker (full)", "symbolic dims",
                                                             "no data-dep. shapes", "TensorRT ops"}
    entry = load_manifest(bundle)["graphs"]["dit_regression"]
    assert entry["precision"] == "fp8" and "onnxruntime_cpu" not in entry["quantization"]
    assert entry["quantization"]["error"]["onnxruntime_vs_fake_quant"]["rel_rms"] <= ORT_VS_FAKE_QUANT


# ----------------------------------------------------------------------------- no ModelOpt / bad input
def test_precision_int8_without_modelopt_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    from latentfuse.export.bundle import export_bundle

    real_import = builtins.__import__

    def no_modelopt(name, *args, **kwargs):
        if name == "modelopt" or name.startswith("modelopt."):
            raise ImportError("No module named 'modelopt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelopt)
    with pytest.raises(MissingDependencyError, match=r"pip install 'latentfuse\[quant\]'"):
        export_bundle(tmp_path / "model", tmp_path / "bundle", precision="int8")
    assert not (tmp_path / "bundle").exists()


def test_quantization_flags_need_a_quantized_precision(capsys, tmp_path):
    from latentfuse.runtime.cli import main

    assert main(["export", "--out", str(tmp_path / "b"), "--quant-level", "ffn"]) == 2
    assert "--quant-level is for --precision int8 / fp8" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "b"), "--precision", "int8", "--calibration-data",
                 "foggy=/nowhere"]) == 2
    assert "unknown task 'foggy'" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "b"), "--precision", "int8", "--quant-level", "most"]) == 2
    assert "quantization level must be one of" in capsys.readouterr().err


def test_quant_options_validate():
    from latentfuse.export.quantize import QuantOptions

    with pytest.raises(LatentfuseError, match="quantized graphs must be among"):
        QuantOptions(graphs=("text_encoder",))
    with pytest.raises(LatentfuseError, match="graph tolerance must be a positive number"):
        QuantOptions(graph_tolerance=0.0)
    with pytest.raises(LatentfuseError, match="expected TASK=DIR"):
        QuantOptions(calibration_data=("datasets/vif",))
    with pytest.raises(LatentfuseError, match="no FP8 kernels"):
        QuantOptions(precision="fp8", target="onnxruntime")


def test_layer_roles_follow_the_levels():
    from latentfuse.export.graphs import graph_specs
    from latentfuse.export.quantize import LEVELS, candidate_layers

    comps = tiny_components()
    module = graph_specs(comps, ["flow"])["dit_flow"].module(comps)
    sizes = [len(candidate_layers(module, level)) for level in LEVELS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(LEVELS)     # each level adds layers
    roles = candidate_layers(module, "all-linear")
    assert roles["dit.blocks.0.attn.qkv"] == "qkv" and roles["dit.blocks.0.moe.router"] == "router"
    assert roles["dit.blocks.0.moe.experts.0.gate"] == "ffn" and roles["dit.final.linear"] == "output"
    assert roles["dit.x_embed"] == "embed" and roles["dit.blocks.0.naf.conv1"] == "conv"
    assert set(candidate_layers(module, "conv").values()) == {"conv"}


def test_draw_crops_from_a_pair_folder(fixture_pairs):
    from latentfuse.calibration.quant_inputs import draw_crops, parse_source

    source = parse_source(f"vif={fixture_pairs}")
    crops = draw_crops([source], 6, crop=64, seed=3)
    names = [c.name.split("@")[0] for c in crops]
    assert len(set(names[:4])) == 4 and names[4] in names[:4]      # every pair once before any repeats
    assert all(c.a.shape[:2] == c.b.shape[:2] == (64, 64) and c.b.ndim == 2 for c in crops)
    assert [c.name for c in draw_crops([source], 6, crop=64, seed=3)] == [c.name for c in crops]
    held_out = draw_crops([source], 2, crop=64, seed=0, exclude=names[:3])
    assert {c.name.split("@")[0] for c in held_out} == set(names[:4]) - set(names[:3])
    with pytest.raises(LatentfuseError, match="not a folder"):
        parse_source("vif=/no/such/folder")


# ----------------------------------------------------------------------------- engines and TensorRT types
def test_fp8_refused_on_an_sm87_profile():
    orin = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}
    with pytest.raises(LatentfuseError) as err:
        check_precision_support(["fp32", "fp8"], orin)
    message = str(err.value)
    assert "NVIDIA Jetson AGX Orin" in message and "8.7" in message and "8.9" in message
    assert "--precision int8" in message
    check_precision_support(["int8", "fp16", "fp32"], orin)
    check_precision_support(["fp8"], {"name": "NVIDIA L4", "compute_capability": "8.9"})
    check_precision_support(["fp8", "int8"], {"name": "NVIDIA H200", "compute_capability": "9.0"})
    with pytest.raises(LatentfuseError, match="SM 7.0"):
        check_precision_support(["int8"], {"name": "Tesla V100", "compute_capability": "7.0"})


def test_trt_type_check_flags_types_tensorrt_does_not_take():
    from onnx import TensorProto, helper, numpy_helper

    def make_onnx(nodes, inputs, outputs, initializers):
        graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model

    from latentfuse.export.checks import unsupported_trt_types

    w8 = numpy_helper.from_array(np.ones((4, 4), np.int8), "w8")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp_bad = numpy_helper.from_array(np.array(3, np.int8), "zp")
    nodes = [helper.make_node("DequantizeLinear", ["w8", "s", "zp"], ["w"], name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Cast", ["y"], ["y8"], to=TensorProto.INT8, name="cast"),
             helper.make_node("Relu", ["y8"], ["z"], name="relu_on_int8")]
    model = make_onnx(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                      [helper.make_tensor_value_info("z", TensorProto.INT8, [2, 4])], [w8, scale, zp_bad])
    found = {(f.node, f.reason.split(" (")[0]) for f in unsupported_trt_types(model)}
    assert ("relu_on_int8", "input type INT8 is not one TensorRT takes") in found
    assert ("dq", "zero point is not 0") in found
    assert not any(node == "mm" for node, _ in found)


@pytest.mark.tensorrt
@requires_modelopt
def test_build_quantized_engines(int8_bundle):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: INT8 / FP8 engines are built on an NVIDIA GPU "
                                           "(no runtime here executes FP8 arithmetic)")
    from latentfuse.export.engines import build_bundle_engines

    jobs = build_bundle_engines(int8_bundle["bundle"], graphs=["dit_regression"], progress=False)
    assert jobs[0]["status"] == "built"
