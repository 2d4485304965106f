"""Static ONNX checks (export.checks) and the graph specs: symbolic dims, data-dependent shapes,
TensorRT op table. Toy graphs and hand-built ONNX keep these fast."""

import types

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from latentfuse.export import checks
from latentfuse.export.graphs import DiTSpec, GraphSpec, Resolution, TensorSpec, graph_specs
from latentfuse.export.onnx import export_graph
from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import BATCH, HEIGHT, LATENT_HEIGHT, LATENT_WIDTH, TEXT_LENGTH, WIDTH


class ToyDecoder(torch.nn.Module):
    """latent [B, 4, h, w] -> image [B, 3, 8h, 8w]: a stand-in for the VAE decoder."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, latent):
        return torch.nn.functional.interpolate(self.conv(latent), scale_factor=8, mode="nearest")


TOY_SPEC = GraphSpec(
    name="toy_decoder", kind="vae_decoder",
    inputs=(TensorSpec("latent", "float32", (BATCH, 4, LATENT_HEIGHT, LATENT_WIDTH)),),
    outputs=(TensorSpec("image", "float32", (BATCH, 3, HEIGHT, WIDTH)),),
)


def test_static_export_fails_symbolic_dims_check(tmp_path):
    result = export_graph(TOY_SPEC, ToyDecoder(), tmp_path / "static", dynamic=False)
    with pytest.raises(LatentfuseError) as err:
        checks.check_symbolic_dims(result.path, TOY_SPEC)
    msg = str(err.value)
    assert "static dims" in msg and "latent[0] (batch) = 2" in msg and "latent[2] (latent_height) = 12" in msg


def test_dynamic_export_has_spec_dim_names(tmp_path):
    result = export_graph(TOY_SPEC, ToyDecoder(), tmp_path / "dyn")
    checks.check_symbolic_dims(result.path, TOY_SPEC)
    model = onnx.load(str(result.path), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert result.files[0] == "toy_decoder.onnx"  # weights under 1 kB stay inline


def test_symbolic_dims_check_reports_missing_input(tmp_path):
    result = export_graph(TOY_SPEC, ToyDecoder(), tmp_path / "dyn")
    wrong = GraphSpec(name="toy_decoder", kind="vae_decoder", inputs=(TensorSpec("z", "float32", (BATCH, 4, 8, 8)),),
                      outputs=TOY_SPEC.outputs)
    with pytest.raises(LatentfuseError, match="input 'z' is missing"):
        checks.check_symbolic_dims(result.path, wrong)


def test_sparse_moe_dit_is_flagged_data_dependent(tmp_path):
    """The sparse (index) MoE dispatch lowers to NonZero; the dense one exports clean."""
    torch.manual_seed(0)
    dit = MoEDiT(DiTConfig.from_preset("tiny", head="regression", depth=1)).eval()
    spec = DiTSpec.create("regression", 16, dit.config.text_dim, max_text_length=32)
    components = types.SimpleNamespace(dit=lambda head: dit)
    sparse = spec.module(components)
    sparse.dit.set_moe_dispatch("sparse")
    result = export_graph(spec, sparse, tmp_path / "sparse", exporter="torchscript", check=False)
    findings = checks.find_data_dependent_shapes(result.path)
    assert any(f.op_type == "NonZero" for f in findings), findings
    with pytest.raises(LatentfuseError, match="data-dependent shapes.*NonZero"):
        checks.check_no_data_dependent_shapes(result.path, "dit_regression")


def _model(nodes, inputs, outputs, initializers=(), opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_taint_analysis_separates_shape_from_value_dependence():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)
    model = _model([
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_by_value"),
        helper.make_node("Shape", ["x"], ["shape_x"]),
        helper.make_node("Reshape", ["x", "shape_x"], ["y2"], name="reshape_by_shape"),
    ], [x, s], [y, y2])
    findings = checks.find_data_dependent_shapes(model)
    assert [f.node for f in findings] == ["reshape_by_value"]


def test_scatter_add_and_dynamic_topk_are_flagged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [4, 4])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "v", "v2")]
    outs += [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("i", "i2")]
    const_k = helper.make_tensor("two", TensorProto.INT64, [1], [2])
    model = _model([
        helper.make_node("ScatterElements", ["x", "idx", "x"], ["a"], name="scatter_add", reduction="add"),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_dynamic"),
        helper.make_node("TopK", ["x", "two"], ["v2", "i2"], name="topk_const"),
    ], [x, idx, k], outs, initializers=[const_k])
    names = {f.node for f in checks.find_data_dependent_shapes(model)}
    assert names == {"scatter_add", "topk_dynamic"}


def test_trt_op_table_is_data_with_source():
    table = checks.load_trt_ops()
    assert table["tensorrt_version"].startswith("10.")
    assert "onnx-tensorrt" in table["source"]
    ops = table["operators"]
    assert ops["LayerNormalization"]["supported"] and ops["Attention"]["supported"]
    assert not ops["Unique"]["supported"] and not ops["SequenceAt"]["supported"]


def test_unsupported_and_custom_ops_are_flagged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("u", "c", "r")]
    model = _model([
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("FusedThing", ["x"], ["c"], domain="com.example"),
        helper.make_node("Relu", ["x"], ["r"]),
    ], [x], outs)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    found = {f.op_type: f.reason for f in checks.unsupported_trt_ops(model)}
    assert set(found) == {"Unique", "FusedThing"}
    assert "custom domain" in found["FusedThing"]
    with pytest.raises(LatentfuseError, match="Unique"):
        checks.check_trt_ops(model, "toy")


def test_spec_shapes_profile_and_samples():
    spec = DiTSpec.create("flow", 16, 128, max_text_length=64, resolution=Resolution(min=64, max=1024, opt=512))
    assert spec.input_names == ["z_t", "t", "z_a", "z_b", "prompt_embeds", "prompt_mask"]
    shapes = spec.shapes(2, 96, 64, 7)
    assert shapes["z_a"] == [2, 16, 12, 8] and shapes["t"] == [2] and shapes["prompt_mask"] == [2, 7]
    prof = spec.profile()
    assert prof["min"]["z_t"] == [1, 16, 8, 8] and prof["max"]["z_t"] == [16, 16, 128, 128]
    assert prof["max"]["prompt_embeds"] == [16, 64, 128] and prof["min"]["prompt_mask"] == [1, 1]
    inputs = spec.sample_inputs(3, 64, 112, 5, seed=3)
    assert inputs["z_t"].shape == (3, 16, 8, 14) and inputs["prompt_mask"].dtype == torch.int64
    mask = inputs["prompt_mask"]
    assert mask[0].all() and (inputs["prompt_embeds"][mask == 0] == 0).all()
    assert torch.equal(spec.sample_inputs(3, 64, 112, 5, seed=3)["z_a"], inputs["z_a"])
    with pytest.raises(LatentfuseError, match="multiple of 16"):
        spec.shapes(1, 100, 64, 4)
    with pytest.raises(LatentfuseError, match="text length"):
        spec.shapes(1, 64, 64, 65)


def test_spec_manifest_round_trip():
    spec = DiTSpec.create("regression", 16, 128, max_text_length=64)
    entry = spec.to_manifest()
    back = GraphSpec.from_manifest("dit_regression", entry, Resolution().to_manifest(), {"max_length": 64})
    assert back.inputs == spec.inputs and back.outputs == spec.outputs and back.profile() == spec.profile()
    assert entry["inputs"][-1] == {"name": "prompt_mask", "dtype": "int64", "shape": ["batch", TEXT_LENGTH],
                                  "role": "prompt_mask"}


def test_graph_specs_reject_unknown_head():
    dit = types.SimpleNamespace(config=DiTConfig.from_preset("tiny"))
    components = types.SimpleNamespace(
        dit=lambda head: dit, vae=types.SimpleNamespace(latent_channels=16),
        text_encoder=types.SimpleNamespace(max_length=64, hidden_size=128, tokenizer=types.SimpleNamespace(vocab_size=100)))
    with pytest.raises(LatentfuseError, match="unknown DiT head 'diffusion'"):
        graph_specs(components, ["diffusion"])
    assert list(graph_specs(components, ["flow"])) == ["text_encoder", "vae_encoder", "vae_decoder", "dit_flow"]


def test_dynamo_failure_falls_back_to_torchscript(tmp_path, monkeypatch):
    import latentfuse.export.onnx as export_onnx

    def broken(*args, **kwargs):
        raise RuntimeError("simulated torch.export failure\nwith a long trace")

    monkeypatch.setattr(export_onnx, "_export_dynamo", broken)
    result = export_graph(TOY_SPEC, ToyDecoder(), tmp_path)
    assert result.exporter == "torchscript"
    assert result.fallback_reason == "RuntimeError: simulated torch.export failure"
    checks.check_symbolic_dims(result.path, TOY_SPEC)  # dynamic_axes kept the dims symbolic
    with pytest.raises(LatentfuseError, match="dynamo export of 'toy_decoder' failed: RuntimeError: simulated"):
        export_graph(TOY_SPEC, ToyDecoder(), tmp_path / "strict", exporter="dynamo")


def test_polygraphy_lint_skips_with_reason_without_graphsurgeon(tmp_path, monkeypatch):
    import importlib.util

    from latentfuse.export.verify import polygraphy_lint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx_graphsurgeon" else real(name, *a))
    row = polygraphy_lint(tmp_path / "unused.onnx", {"latent": [1, 4, 8, 8]}, "toy")
    assert row.status == "skipped" and "onnx-graphsurgeon" in row.detail


def test_polygraphy_lint_passes_on_exported_graph(tmp_path):
    import importlib.util

    from latentfuse.export.verify import polygraphy_lint

    if importlib.util.find_spec("onnx_graphsurgeon") is None:
        pytest.skip("polygraphy check lint needs onnx-graphsurgeon, which is not installed")
    result = export_graph(TOY_SPEC, ToyDecoder(), tmp_path)
    row = polygraphy_lint(result.path, TOY_SPEC.shapes(1, 64, 112, 4), "toy_decoder")
    assert row.status == "pass", row.detail


def test_parity_detects_a_mismatching_graph(tmp_path):
    from latentfuse.export.graphs import DEFAULT_SHAPES
    from latentfuse.export.verify import parity

    torch.manual_seed(0)
    model = ToyDecoder().eval()
    result = export_graph(TOY_SPEC, model, tmp_path)
    rows = parity(TOY_SPEC, model, result.path)
    assert [r.passed for r in rows] == [True] * len(DEFAULT_SHAPES)
    assert max(r.max_abs for r in rows) < 1e-5
    other = ToyDecoder().eval()                     # different weights: the graph no longer matches
    rows = parity(TOY_SPEC, other, result.path)
    assert not any(r.passed for r in rows) and min(r.max_abs for r in rows) > 1e-2
