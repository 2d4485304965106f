"""The precision plan: measured overflow, FP16 error and statistics chains decide which nodes stay FP32."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from latentfuse.calibration.plan import PLAN_FORMAT, Thresholds, load_plan, make_plan, plan_graph, save_plan
from latentfuse.calibration.fp16 import compare, convert_model
from latentfuse.model.errors import LatentfuseError

F = TensorProto.FLOAT


def kept(plan):
    return {entry["name"]: entry for entry in plan["fp32_nodes"]}


def test_overflowing_node_stays_fp32_and_fixes_the_fp16_graph(overflow, overflow_feeds):
    plan = plan_graph(overflow, overflow_feeds)
    nodes = kept(plan)
    big = max(np.abs(f["x"]).max() for f in overflow_feeds) * 1e3
    # Producer and consumer of the ~1e6 tensor: no Cast to FP16 may touch it.
    assert set(nodes) == {"up", "down"}
    assert nodes["up"]["reason"] == "range" and nodes["up"]["tensor"] == "big"
    assert nodes["up"]["value"] == pytest.approx(big, rel=1e-5)
    assert plan["reason_counts"] == {"range": 2}

    mixed = compare(overflow, convert_model(overflow, plan), overflow_feeds)
    naive = compare(overflow, convert_model(overflow, {"fp32_nodes": []}), overflow_feeds)
    assert mixed["nonfinite"] == 0 and mixed["rel"] < 5e-3
    assert naive["nonfinite"] > 0  # full FP16: the middle tensor is inf


def test_range_margin_is_a_threshold(overflow, overflow_feeds):
    """With the limit raised above the measured maximum nothing is kept; the default keeps it."""
    big = max(np.abs(f["x"]).max() for f in overflow_feeds) * 1e3
    loose = Thresholds(range_fraction=2 * big / 65504)
    assert plan_graph(overflow, overflow_feeds, loose)["num_fp32_nodes"] == 0


def rms_norm_model(make_onnx):
    """Decomposed RMSNorm (T5 style) with eps=1e-12: x * 1/sqrt(mean(x^2) + eps)."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean", keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt"),
        helper.make_node("Reciprocal", ["rms"], ["inv"], name="recip"),
        helper.make_node("Mul", ["x", "inv"], ["y"], name="normalize"),
    ]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps")]
    return make_onnx(nodes, [helper.make_tensor_value_info("x", F, ["n", 64])],
                     [helper.make_tensor_value_info("y", F, ["n", 64])], inits)


def test_normalisation_statistics_chain_stays_fp32(make_onnx):
    model = rms_norm_model(make_onnx)
    rng = np.random.default_rng(0)
    # |x| ~ 1e-3: x^2 ~ 1e-6 lies in FP16's subnormal range, so the mean loses ~1% in FP16.
    feeds = [{"x": (rng.uniform(5e-4, 2e-3, (3, 64)) * rng.choice([-1, 1], (3, 64))).astype(np.float32)}
             for _ in range(2)]
    plan = plan_graph(model, feeds)
    nodes = kept(plan)
    assert nodes["mean"]["reason"] == "fp16_error" and nodes["mean"]["value"] > 1e-2
    assert nodes["mean"]["value"] == plan["statistic_errors"]["mean"]
    assert nodes["square"]["reason"] == "fp16_error_input"      # the mean must read FP32 squares
    assert nodes["add_eps"]["reason"] == "underflow"             # eps=1e-12 is zero in FP16
    assert {nodes["sqrt"]["reason"], nodes["recip"]["reason"]} == {"statistics_chain"}
    assert "normalize" not in nodes                              # full-size tensor: back to FP16

    mixed = compare(model, convert_model(model, plan), feeds)["rel"]
    naive = compare(model, convert_model(model, {"fp32_nodes": []}), feeds)["rel"]
    assert mixed < 2e-3 < naive


def test_softmax_with_large_logits_stays_fp32_with_its_input(make_onnx):
    nodes = [helper.make_node("Add", ["x", "offset"], ["logits"], name="offset"),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)]
    model = make_onnx(nodes, [helper.make_tensor_value_info("x", F, ["n", 16])],
                      [helper.make_tensor_value_info("y", F, ["n", 16])],
                      [numpy_helper.from_array(np.array(5000, np.float32), "offset")])
    feeds = [{"x": np.random.default_rng(1).uniform(0, 3, (2, 16)).astype(np.float32)}]
    plan = plan_graph(model, feeds)
    nodes = kept(plan)
    # 5000 + u is below the range limit, but FP16 spacing at 5000 is 4: the softmax is garbage.
    assert nodes["softmax"]["reason"] == "fp16_error" and nodes["softmax"]["value"] > 0.1
    assert nodes["offset"]["reason"] == "fp16_error_input"
    assert compare(model, convert_model(model, plan), feeds)["rel"] < 1e-3


def test_benign_graph_keeps_nothing(make_onnx):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Softmax", ["h"], ["y"], name="softmax", axis=-1)]
    w = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32) * 0.3
    model = make_onnx(nodes, [helper.make_tensor_value_info("x", F, ["n", 8])],
                      [helper.make_tensor_value_info("y", F, ["n", 8])], [numpy_helper.from_array(w, "w")])
    feeds = [{"x": np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)}]
    plan = plan_graph(model, feeds)
    assert plan["fp32_nodes"] == [] and plan["statistic_errors"]["softmax"] < 1e-2
    # The escalation rung keeps every statistic node and what feeds it, whatever the error.
    escalated = kept(plan_graph(model, feeds, escalate=True))
    assert escalated["softmax"]["reason"] == "escalated" and escalated["mm"]["reason"] == "fp16_error_input"


def test_plan_file_roundtrip_and_errors(tmp_path, overflow, overflow_feeds):
    plan = make_plan({"toy": plan_graph(overflow, overflow_feeds)}, Thresholds(),
                     {"description": "3 random feeds"})
    path = save_plan(plan, tmp_path / "plan.json")
    again = load_plan(path)
    assert again == json.loads(json.dumps(plan)) and again["format"] == PLAN_FORMAT
    assert again["thresholds"]["range_limit"] == pytest.approx(65504 / 4)
    with pytest.raises(LatentfuseError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(LatentfuseError, match="not a precision plan"):
        load_plan(tmp_path / "bad.json")
