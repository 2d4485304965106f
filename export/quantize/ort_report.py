"""The quantized graph on ONNX Runtime: sessions, outputs, and which layers its CPU provider runs as integer kernels."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np



def ort_session(path: str | os.PathLike, optimized: str | os.PathLike | None = None, threads: int | None = None):
    from latentfuse.runtime.backends.onnxruntime_backend import ort_session as session

    return session(path, optimization="all", threads=threads, optimized=optimized, purpose="quantized graphs")


def ort_outputs(session, spec, batches: Sequence[tuple]) -> list[np.ndarray]:
    names = spec.input_names
    out = []
    for args in batches:
        feed = {n: (a.numpy() if hasattr(a, "numpy") else np.asarray(a)) for n, a in zip(names, args)}
        out.append(np.asarray(session.run([spec.output_names[0]], feed)[0], np.float32))
    return out


INTEGER_KERNELS = ("MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "QGemm", "QLinearConv", "ConvInteger",
                   "DynamicQuantizeMatMul", "QAttention")


def ort_kernel_report(path: str | os.PathLike, layers: Iterable[str] = ()) -> dict:
    """Which quantized layers ONNX Runtime's CPU provider runs as integer kernels after its graph
    optimisation (``ORT_ENABLE_ALL``) and which it dequantizes (a DequantizeLinear in front of an FP32
    MatMul / Conv), read from the optimised model it writes."""
    import onnx

    known = set(layers)
    with tempfile.TemporaryDirectory(prefix="latentfuse-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}

    def layer_of(tensor: str) -> str | None:
        base = tensor.removesuffix("_quantized")
        if base.endswith(".weight"):
            return base[: -len(".weight")]
        return None

    integer: dict[str, str] = {}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in INTEGER_KERNELS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for x in node.input:
                layer = layer_of(x)
                if layer:
                    integer[layer] = node.op_type
                    break
    dequantized: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm") and len(node.input) > 1:
            src = producer.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                layer = layer_of(src.input[0])
                if layer and layer not in integer:
                    dequantized[layer] = node.op_type
    q_left = sum(1 for n in graph.node if n.op_type == "QuantizeLinear")
    dq_left = sum(1 for n in graph.node if n.op_type == "DequantizeLinear")
    return {"integer_kernels": counts, "integer_layers": dict(sorted(integer.items())),
            "dequantized_layers": dict(sorted(dequantized.items())),
            "unattributed": sorted(known - set(integer) - set(dequantized)) if known else [],
            "quantize_nodes": q_left, "dequantize_nodes": dq_left}
