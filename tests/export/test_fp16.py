"""Mixed-precision FP16 conversion: plan-driven FP32 islands, error against FP32, a real exported DiT."""

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from latentfuse.calibration.fp16 import compare, convert_model, drop_cast_round_trips, emulate_fp16_storage
from latentfuse.calibration.plan import plan_graph
from latentfuse.export.fp16 import convert_bundle_graph
from latentfuse.model.errors import LatentfuseError


def overflow_model(scale=1e3, width=8):
    """x -> MatMul(scale*I) -> MatMul(I/scale) -> Relu: the middle tensor is ~1e3 |x|."""
    nodes = [helper.make_node("MatMul", ["x", "W_up"], ["big"], name="up"),
             helper.make_node("MatMul", ["big", "W_down"], ["small"], name="down"),
             helper.make_node("Relu", ["small"], ["y"], name="relu")]
    inits = [numpy_helper.from_array((np.eye(width) * scale).astype(np.float32), "W_up"),
             numpy_helper.from_array((np.eye(width) / scale).astype(np.float32), "W_down")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


FEEDS = [{"x": (np.random.default_rng(0).standard_normal((4, 8)) * 300).astype(np.float32)}]


@pytest.mark.parametrize("emulate", [True, False], ids=["ort-emulated", "onnx-reference"])
def test_plan_keeps_overflow_finite_and_naive_fp16_does_not(emulate):
    model = overflow_model()
    plan = plan_graph(model, FEEDS)
    mixed = convert_model(model, plan)
    # FP32 island: both MatMuls, their weights in FP32, no Cast on the 1e6 tensor between them.
    types = {i.name: i.data_type for i in mixed.graph.initializer}
    assert types == {"W_up": TensorProto.FLOAT, "W_down": TensorProto.FLOAT}
    producers = {o: n for n in mixed.graph.node for o in n.output}
    assert producers[next(n for n in mixed.graph.node if n.name == "down").input[0]].name == "up"
    assert [i.type.tensor_type.elem_type for i in mixed.graph.input] == [TensorProto.FLOAT]  # IO types kept

    good = compare(model, mixed, FEEDS, emulate=emulate)
    assert good["nonfinite"] == 0 and good["rel"] < 1e-3
    expected = np.maximum(FEEDS[0]["x"], 0)
    assert good["max_abs"] < 1e-3 * np.abs(expected).max()

    naive = convert_model(model, {"fp32_nodes": []})
    assert {i.data_type for i in naive.graph.initializer} == {TensorProto.FLOAT16}
    bad = compare(model, naive, FEEDS, emulate=emulate)
    assert bad["nonfinite"] > 0 and bad["rel"] == float("inf")


def test_cast_round_trip_removed_only_between_fp32_nodes():
    model = overflow_model()
    plan = {"fp32_nodes": [{"name": "up"}, {"name": "down"}]}
    from onnxruntime.transformers.float16 import convert_float_to_float16

    raw = convert_float_to_float16(model, keep_io_types=True, node_block_list=["up", "down"])
    casts_before = sum(n.op_type == "Cast" for n in raw.graph.node)
    assert drop_cast_round_trips(raw) >= 1
    assert sum(n.op_type == "Cast" for n in raw.graph.node) < casts_before
    assert sum(n.op_type == "Cast" for n in convert_model(model, plan).graph.node) == 2  # into relu, out of graph


def test_two_fp32_readers_of_one_fp16_tensor_stay_valid_ssa():
    """The converter gives each FP32 reader its own identically named Cast; one must remain."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sqrt", ["r"], ["s1"], name="sqrt1"),
             helper.make_node("Sqrt", ["r"], ["s2"], name="sqrt2"),
             helper.make_node("Add", ["s1", "s2"], ["y"], name="add")]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "fanout", [helper.make_tensor_value_info("x", f, ["n", 4])],
                              [helper.make_tensor_value_info("y", f, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    mixed = convert_model(model, {"fp32_nodes": [{"name": "sqrt1"}, {"name": "sqrt2"}]})  # checker passes
    outputs = [o for n in mixed.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    x = np.abs(np.random.default_rng(0).standard_normal((3, 4))).astype(np.float32)
    assert compare(model, mixed, [{"x": x}])["rel"] < 1e-3


def test_emulation_rounds_every_fp16_tensor():
    """ONNX Runtime's CPU provider would run MatMul->MatMul in FP32 and hide the overflow; the twin does not."""
    naive = convert_model(overflow_model(), {"fp32_nodes": []})
    twin = emulate_fp16_storage(naive)
    assert all(n.op_type != "MatMul" or all("emu32" in i for i in n.input if not i.startswith("W"))
               for n in twin.graph.node)


def test_policy_fp32_and_stale_plans(tmp_path):
    model = overflow_model()
    same = convert_model(model, {"policy": "fp32", "fp32_nodes": []})
    assert [n.op_type for n in same.graph.node] == [n.op_type for n in model.graph.node]
    with pytest.raises(LatentfuseError, match="absent from graph"):
        convert_model(model, {"fp32_nodes": [{"name": "no_such_node"}]})


@pytest.fixture(scope="module")
def tiny_dit_onnx(tmp_path_factory):
    """A 1-block tiny regression DiT exported with dynamic batch / H / W / prompt length."""
    import torch

    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT

    torch.manual_seed(0)
    dit = MoEDiT(DiTConfig.from_preset("tiny", head="regression", depth=1)).eval()
    with torch.no_grad():  # zero-initialised gates make a fresh DiT the identity; perturb them
        for p in dit.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.05)
    args = (torch.randn(2, 16, 8, 12), torch.randn(2, 16, 8, 12), torch.randn(2, 5, 128),
            torch.ones(2, 5, dtype=torch.int64))
    path = tmp_path_factory.mktemp("dit") / "dit.onnx"
    spatial = {0: "batch", 2: "latent_height", 3: "latent_width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(dit, args, str(path), input_names=["z_a", "z_b", "prompt_embeds", "prompt_mask"],
                          output_names=["latent"], opset_version=18, dynamo=False,
                          dynamic_axes={"z_a": spatial, "z_b": spatial, "prompt_embeds": {0: "batch", 1: "text_length"},
                                        "prompt_mask": {0: "batch", 1: "text_length"}})
    return path


def dit_feeds(shapes, seed=0):
    rng = np.random.default_rng(seed)
    feeds = []
    for b, h, w, length in shapes:
        mask = np.ones((b, length), np.int64)
        mask[0, length - 1:] = 0
        feeds.append({"z_a": rng.standard_normal((b, 16, h, w)).astype(np.float32),
                      "z_b": rng.standard_normal((b, 16, h, w)).astype(np.float32),
                      "prompt_embeds": rng.standard_normal((b, length, 128)).astype(np.float32),
                      "prompt_mask": mask})
    return feeds


def test_tiny_dit_mixed_fp16_runs_with_bounded_error(tiny_dit_onnx, tmp_path):
    calibration = dit_feeds([(1, 8, 12, 5), (2, 12, 8, 7), (1, 8, 8, 3)])
    plan = plan_graph(tiny_dit_onnx, calibration)
    held_out = dit_feeds([(1, 16, 10, 6), (2, 10, 16, 4)], seed=1)  # other aspect ratios than calibration
    out = tmp_path / "dit_fp16.onnx"
    stats = convert_bundle_graph(tiny_dit_onnx, out, plan, feeds=held_out)
    assert out.is_file() and stats["files"][0] == str(out)
    converted = onnx.load(str(out))
    assert stats["weight_bytes"]["fp16"] > 10 * stats["weight_bytes"]["fp32"]  # weights really are FP16
    assert [i.type.tensor_type.elem_type for i in converted.graph.input][:3] == [TensorProto.FLOAT] * 3
    err = stats["error"]
    assert err["nonfinite"] == 0 and err["rel"] < 1e-2, err
    # The NumPy FP16 reference agrees with the ORT emulation to within the same order.
    ref = compare(onnx.load(str(tiny_dit_onnx)), converted, held_out[:1], emulate=False)
    assert ref["nonfinite"] == 0 and ref["rel"] < 2e-2


def test_external_data_in_and_out(tiny_dit_onnx, tmp_path):
    model = onnx.load(str(tiny_dit_onnx))
    src = tmp_path / "src" / "dit.onnx"
    src.parent.mkdir()
    onnx.save(model, str(src), save_as_external_data=True, location="dit.onnx.data", size_threshold=0)
    out = tmp_path / "out" / "dit.onnx"
    from latentfuse.export.fp16 import save_model

    files = save_model(convert_model(onnx.load(str(src)), {"fp32_nodes": []}), out, external_data=True)
    assert [f.name for f in files] == ["dit.onnx", "dit.onnx.data"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, dit_feeds([(1, 8, 8, 4)])[0])
    assert np.isfinite(y).all()
