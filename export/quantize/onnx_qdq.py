"""The exported graph's Q/DQ: export with the TorchScript exporter, then weight quantizers folded into INT8 / FP8
initializers, ModelOpt's FP8 ops made standard ONNX, FP8 convolution weights added."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from latentfuse.export.quantize.calibrate import QuantizedGraph
from latentfuse.export.quantize.modelopt_utils import quiet_modelopt
from latentfuse.export.quantize.options import FP8_MAX, MIN_OPSET
from latentfuse.model.errors import LatentfuseError

if TYPE_CHECKING:  # only named in an annotation: export.onnx imports torch
    from latentfuse.export.onnx import ExportedGraph


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _set_attr(node, name: str, value) -> None:
    import onnx

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for init in graph.initializer:
        if init.data_type not in (17, 18, 19, 20):     # numpy has no FP8: skip (never read back here)
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def _fp8_tensor(values: np.ndarray, name: str):
    """A FLOAT8E4M3FN initializer of ``values`` (already scaled), round to nearest even, saturating."""
    import onnx
    import torch

    t = torch.from_numpy(np.ascontiguousarray(np.clip(np.asarray(values, np.float32), -FP8_MAX, FP8_MAX)))
    raw = t.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT8E4M3FN
    tensor.dims.extend(raw.shape)
    tensor.raw_data = raw.tobytes()
    return tensor


def _fp8_zero(name: str):
    return _fp8_tensor(np.zeros((), np.float32), name)


def convert_fp8_ops(model) -> int:
    """ModelOpt's ``trt::TRT_FP8QuantizeLinear`` / ``TRT_FP8DequantizeLinear`` -> standard ONNX
    QuantizeLinear (``saturate=1``) / DequantizeLinear with a FLOAT8E4M3FN zero point (opset >= 19)."""
    graph = model.graph
    count = 0
    zero_name = "fp8_zero_point"
    fp8_outputs = set()
    for node in graph.node:
        if node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            quant = node.op_type == "TRT_FP8QuantizeLinear"
            node.op_type = "QuantizeLinear" if quant else "DequantizeLinear"
            node.domain = ""
            while len(node.input) < 3:
                node.input.append(zero_name)
            if quant:
                _set_attr(node, "saturate", 1)
                fp8_outputs.add(node.output[0])
            count += 1
    if count:
        graph.initializer.append(_fp8_zero(zero_name))
        keep = [v for v in graph.value_info if v.name not in fp8_outputs]   # exporter typed them uint8
        del graph.value_info[:]
        graph.value_info.extend(keep)
        keep = [o for o in model.opset_import if o.domain != "trt"]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return count


def fold_weight_quantizers(model) -> dict[str, str]:
    """Replace ``QuantizeLinear(W) -> DequantizeLinear`` on a constant weight by the quantized weight
    (INT8, or FP8 by the zero point's type) stored under W's name, read by the DequantizeLinear; a
    Transpose between the DequantizeLinear and MatMul / Gemm consumers is folded into the stored weight
    (and the DequantizeLinear's axis). Returns ``{weight name: "int8" | "fp8"}``."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    values = _constants(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    fp8_zero = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    remove, folded = [], {}
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        weight = q.input[0]
        if weight not in inits or weight in folded:
            continue
        outs = consumers.get(q.output[0], [])
        if len(outs) != 1 or outs[0].op_type != "DequantizeLinear":
            continue
        dq = outs[0]
        w = values[weight].astype(np.float32)
        scale = values[q.input[1]].astype(np.float32)
        axis = _attr(q, "axis", 1)
        if scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        fp8 = len(q.input) > 2 and q.input[2] in fp8_zero
        if fp8:
            stored = np.asarray(w / scale, np.float32)
        else:
            zp = values[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
            info = np.iinfo(zp.dtype)
            stored = np.clip(np.rint(w / scale) + zp.astype(np.float32).reshape(scale.shape if zp.size > 1 else ()),
                             info.min, info.max).astype(zp.dtype)
        after = consumers.get(dq.output[0], [])
        if (len(after) == 1 and after[0].op_type == "Transpose"
                and all(c.op_type in ("MatMul", "Gemm") for c in consumers.get(after[0].output[0], []))):
            t = after[0]
            perm = list(_attr(t, "perm", list(range(w.ndim))[::-1]))
            stored = np.ascontiguousarray(np.transpose(stored, perm))
            if scale.size > 1:
                _set_attr(dq, "axis", perm.index(axis if axis >= 0 else axis + w.ndim))
            for c in consumers.get(t.output[0], []):
                for i, x in enumerate(c.input):
                    if x == t.output[0]:
                        c.input[i] = dq.output[0]
            remove.append(t)
        others = [c for c in consumers.get(weight, []) if c is not q]
        name = weight if not others else weight + "_quantized"
        new = _fp8_tensor(stored, name) if fp8 else numpy_helper.from_array(stored, name)
        if name == weight:
            inits[weight].CopyFrom(new)
        else:
            graph.initializer.append(new)
        dq.input[0] = name
        remove.append(q)
        folded[name] = "fp8" if fp8 else "int8"
    if remove:
        ids = {id(n) for n in remove}
        kept = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(kept)
        used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        kept_inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
    return folded


def add_fp8_conv_weights(model, amax: Mapping[str, float]) -> list[str]:
    """FP8 weights for the convolutions whose weight quantizers were off during export: ``amax`` maps
    a weight initializer name (``<layer>.weight``) to its calibrated max |w|; each such Conv weight is
    stored as FLOAT8E4M3FN (per-tensor scale amax / 448) behind a DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done = []
    new_nodes = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in amax:
            continue
        name = node.input[1]
        if name not in inits:
            raise LatentfuseError(f"FP8 export: the weight {name!r} of Conv {node.name!r} is not an initializer")
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.float32(max(float(amax[name]), 1e-12) / FP8_MAX)
        inits[name].CopyFrom(_fp8_tensor(w / scale, name))
        scale_name, zp_name, out = f"{name}_scale", f"{name}_zero_point", f"{name}_dequantized"
        graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), scale_name))
        graph.initializer.append(_fp8_zero(zp_name))
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [name, scale_name, zp_name], [out],
                                               name=f"{node.name}/weight_quantizer/DequantizeLinear"))
        node.input[1] = out
        done.append(name)
    if new_nodes:
        nodes = list(new_nodes) + list(graph.node)       # DQ of constants first: still topological
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def postprocess(model, precision: str, fp8_conv_amax: Mapping[str, float] | None = None) -> dict[str, str]:
    """Every step of the module docstring's step 4 on an exported model; returns the quantized weights."""
    if precision == "fp8":
        convert_fp8_ops(model)
    folded = fold_weight_quantizers(model)
    if precision == "fp8" and fp8_conv_amax:
        for name in add_fp8_conv_weights(model, fp8_conv_amax):
            folded[name] = "fp8"
    # the exporter's shape / type hints of Q/DQ outputs predate the folding (transposed weights, FP8
    # types): drop them, shape inference recomputes them
    qdq = {o for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for o in n.output}
    kept = [v for v in model.graph.value_info if v.name not in qdq]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return folded


def graph_quantized_layers(model) -> dict[str, dict]:
    """``{layer: {"weight": "int8"|"fp8", "activation": bool}}`` from a Q/DQ graph: a layer is quantized
    where a DequantizeLinear reads its INT8 / FP8 weight ``<layer>.weight``; its activation is quantized
    where the node consuming that weight reads its other input from a DequantizeLinear too."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8", onnx.TensorProto.FLOAT8E4M3FN: "fp8"}
    out = {}
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        w = dq.input[0]
        if types.get(w) not in names or not w.removesuffix("_quantized").endswith(".weight"):
            continue
        layer = w.removesuffix("_quantized")[: -len(".weight")]
        act = False
        for op in consumers.get(dq.output[0], []):
            others = [x for x in op.input if x and x != dq.output[0] and x in producer]
            act = act or any(producer[x].op_type == "DequantizeLinear" for x in others[:1])
        out[layer] = {"weight": names[types[w]], "activation": act}
    return out


def export_quantized(graph: QuantizedGraph, out_dir: str | os.PathLike, opset: int) -> "ExportedGraph":
    """Export the calibrated module (its current layer plan) to ``out_dir/<name>.onnx`` (+ ``.data``)."""
    import onnx
    import torch

    from latentfuse.export.checks import check_symbolic_dims
    from latentfuse.export.onnx import export_graph, save_with_external_data

    if opset < MIN_OPSET:
        raise LatentfuseError(f"quantized export needs ONNX opset >= {MIN_OPSET} (QuantizeLinear with per-axis INT8 "
                              f"and FLOAT8E4M3FN), got --opset {opset}")
    spec = graph.spec
    out_dir = Path(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.quant-", dir=out_dir))
    conv_amax, switched = {}, []
    try:
        if graph.precision == "fp8":
            # ModelOpt's FP8 weight op has no static output shape, which the TorchScript Conv symbolic
            # needs: export those weights unquantized and add their DequantizeLinear afterwards.
            for name, sub in graph.layers.items():
                if isinstance(sub, torch.nn.Conv2d) and sub.weight_quantizer.is_enabled:
                    conv_amax[f"{name}.weight"] = float(graph.amax(name).max())
                    sub.weight_quantizer.disable()
                    switched.append(sub.weight_quantizer)
        with quiet_modelopt():
            raw = export_graph(spec, graph.model, stage, opset=min(opset, 20), exporter="torchscript", check=False)
        model = onnx.load(str(raw.path))
        postprocess(model, graph.precision, conv_amax)
        final = out_dir / f"{spec.name}.onnx"
        files = save_with_external_data(model, final)
        del model
        check_symbolic_dims(final, spec)
        raw.path, raw.files = final, files
        return raw
    finally:
        for q in switched:
            q.enable()
        shutil.rmtree(stage, ignore_errors=True)
