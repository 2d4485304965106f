"""Calibration ranges against analytic maxima on small graphs with known values."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from latentfuse.calibration.ranges import FP16_FLUSH, FP16_MIN_NORMAL, TensorRange, measure_ranges
from latentfuse.model.errors import LatentfuseError


def known_model(make_model):
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Mul", ["x", "three"], ["triple"], name="triple"),
        helper.make_node("Add", ["triple", "one"], ["shifted"], name="shift"),
        helper.make_node("Exp", ["x"], ["expx"], name="exp"),
        helper.make_node("Mul", ["x", "tiny"], ["subnormal"], name="to_subnormal"),
        helper.make_node("Mul", ["x", "tinier"], ["flushed"], name="to_zero"),
        helper.make_node("Log", ["relu"], ["logrelu"], name="log"),
        helper.make_node("Relu", ["x"], ["relu"], name="relu"),
        helper.make_node("ReduceSum", ["expx"], ["total"], name="sum", keepdims=0),
    ]
    # Log before Relu in node order is invalid ONNX; keep topological order.
    nodes = nodes[:5] + [nodes[6], nodes[5], nodes[7]]
    outs = [helper.make_tensor_value_info(n, f, [] if n == "total" else ["n", 5])
            for n in ("shifted", "logrelu", "total", "subnormal", "flushed")]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("three", 3.0), ("one", 1.0), ("tiny", 1e-6), ("tinier", 1e-9))]
    return make_model(nodes, [helper.make_tensor_value_info("x", f, ["n", 5])], outs, inits)


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_ranges_equal_analytic_maxima(chunk_size, make_onnx):
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.uniform(-4, 4, (b, 5)).astype(np.float32)} for b in (1, 3, 2)]
    x = np.concatenate([f["x"].ravel() for f in feeds]).astype(np.float64)
    stats = measure_ranges(known_model(make_onnx), feeds, chunk_size=chunk_size)

    assert stats["x"].max_abs == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert stats["triple"].max_abs == pytest.approx(3 * np.abs(x).max(), rel=1e-6)
    assert stats["shifted"].max_abs == pytest.approx(np.abs(3 * x + 1).max(), rel=1e-6)
    assert stats["expx"].max_abs == pytest.approx(np.exp(x.max()), rel=1e-5)
    totals = [np.exp(f["x"].astype(np.float64)).sum() for f in feeds]
    assert stats["total"].max_abs == pytest.approx(max(totals), rel=1e-5)
    assert stats["three"].max_abs == 3.0  # initializers are measured statically

    # x*1e-6 lies entirely in fp16's subnormal range; x*1e-9 rounds to zero in fp16.
    nonzero = np.count_nonzero(x)
    assert stats["subnormal"].nonzero == nonzero
    assert stats["subnormal"].subnormal_fraction == pytest.approx(np.mean(np.abs(x[x != 0]) * 1e-6 < FP16_MIN_NORMAL))
    assert stats["subnormal"].flush_fraction == pytest.approx(np.mean(np.abs(x[x != 0]) * 1e-6 < FP16_FLUSH))
    assert stats["flushed"].flush_fraction == 1.0
    assert stats["x"].subnormal_fraction == 0.0

    # log(relu(x)) is -inf wherever x <= 0: counted as non-finite, excluded from max |x|.
    assert stats["logrelu"].nonfinite == int((x <= 0).sum())
    assert stats["logrelu"].max_abs == pytest.approx(np.abs(np.log(x[x > 0])).max(), rel=1e-5)
    assert stats["shifted"].count == x.size and stats["shifted"].shape == [2, 5]
    assert stats["total"].numel == 1


def test_tensor_range_roundtrip():
    r = TensorRange("t")
    r.update(np.array([0.0, 1e-6, -3.0, np.inf], np.float32))
    assert (r.max_abs, r.nonfinite, r.nonzero, r.subnormal) == (3.0, 1, 2, 1)
    again = TensorRange.from_dict(r.to_dict())
    assert again == r


def test_missing_inputs_and_files_are_user_errors(tmp_path, make_onnx):
    with pytest.raises(LatentfuseError, match="lacks graph inputs"):
        measure_ranges(known_model(make_onnx), [{"y": np.zeros((1, 5), np.float32)}])
    with pytest.raises(LatentfuseError, match="does not exist"):
        measure_ranges(tmp_path / "nope.onnx", [{"x": np.zeros((1, 5), np.float32)}])
    with pytest.raises(LatentfuseError, match="at least one feed"):
        measure_ranges(known_model(make_onnx), [])
