"""Small hand-built ONNX graphs with known activation ranges (shared by the calibration and fp16 tests)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def overflow_model(scale: float = 1e3, width: int = 8):
    """x -> MatMul(x, scale*I) -> MatMul(., I/scale) -> Relu -> Softmax: |middle| ~ scale * |x|.

    With |x| ~ 1e3 the middle tensor reaches ~1e6, far beyond FP16's 65504, while the output is O(1).
    """
    up = (np.eye(width) * scale).astype(np.float32)
    down = (np.eye(width) / scale).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W_up"], ["big"], name="up"),
        helper.make_node("MatMul", ["big", "W_down"], ["small"], name="down"),
        helper.make_node("Relu", ["small"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "c"], ["r2"], name="scale"),
        helper.make_node("Softmax", ["r2"], ["y"], name="softmax", axis=-1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [numpy_helper.from_array(up, "W_up"), numpy_helper.from_array(down, "W_down"),
         numpy_helper.from_array(np.array(0.01, np.float32), "c")],
    )


@pytest.fixture
def overflow():
    return overflow_model()


@pytest.fixture
def overflow_feeds():
    rng = np.random.default_rng(0)
    return [{"x": (rng.standard_normal((4, 8)) * 300).astype(np.float32)} for _ in range(3)]


@pytest.fixture
def make_onnx():
    """``make_model(nodes, inputs, outputs, initializers)``: a checked opset-18 model."""
    return make_model
