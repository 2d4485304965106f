"""Static checks on an exported ONNX graph: symbolic dims, data-dependent shapes, TensorRT op support.

- :func:`check_symbolic_dims`: every dim the :class:`~latentfuse.export.graphs.GraphSpec` declares symbolic must be
  symbolic (``dim_param``) in the ONNX inputs and outputs. ``torch.export`` silently specialises a dim
  traced at size 1 or hit by a shape-dependent branch; this catches it.
- :func:`find_data_dependent_shapes`: TensorRT needs every tensor shape to be computable from the input
  shapes alone (docs/design.md "MoE in the graph"). Flags ops whose output shape depends on tensor *values*
  (NonZero - what boolean-mask indexing and ``torch.nonzero`` lower to -, Compress, Unique,
  NonMaxSuppression), scatters with a reduction (scatter-add), and - by a taint analysis from the graph
  inputs, where ``Shape``/``Size`` cut the dependency - shape operands (Reshape's shape, Range's bounds,
  Expand/Tile/ConstantOfShape/Slice/Pad/Resize operands, TopK's K) that are computed from input values.
- :func:`unsupported_trt_ops`: op types outside TensorRT's ONNX parser support matrix, which is kept as
  data in ``export/trt_onnx_ops.json`` (transcribed from onnx-tensorrt ``docs/operators.md``), and
  :func:`unsupported_trt_types`: nodes whose data input has a type outside the op's types in that table
  (an FP8 or INT8 tensor where TensorRT takes floats), Q/DQ with a non-zero zero point.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from latentfuse.model.errors import LatentfuseError

TRT_OPS_PATH = Path(__file__).with_name("trt_onnx_ops.json")

# Ops whose output shape is a function of input values, whatever their operands.
DATA_DEPENDENT_OPS = {
    "NonZero": "output length = number of non-zero values (torch.nonzero / boolean-mask indexing)",
    "Compress": "output length = number of true conditions (boolean-mask selection)",
    "Unique": "output length = number of distinct values",
    "NonMaxSuppression": "output length = number of kept boxes",
}
# op type -> indices of inputs that determine the output shape.
SHAPE_OPERANDS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Pad": (1,), "Resize": (2, 3), "Upsample": (1,), "TopK": (1,), "OneHot": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "Split": (1,), "CenterCropPad": (1,),
}
SHAPE_ONLY_OPS = {"Shape", "Size"}           # their outputs depend on shapes, never on values
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Finding:
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.reason}"


def _load(model):
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model), load_external_data=False)
    return model


def _graphs(graph) -> Iterator:
    """The graph and every subgraph (If / Loop / Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _node_label(node, index: int) -> str:
    return node.name or f"#{index}"


# ---------------------------------------------------------------------- symbolic dims
def _io_dims(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        elif d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(None)  # unknown, neither static nor named: still dynamic
    return dims


def check_symbolic_dims(model, spec) -> None:
    """Raise a :class:`LatentfuseError` listing every input/output dim that the spec declares symbolic
    but the exported graph has static (or any declared I/O the graph lacks)."""
    model = _load(model)
    problems, static = [], []
    for kind, declared, actual in (("input", spec.inputs, model.graph.input),
                                   ("output", spec.outputs, model.graph.output)):
        by_name = {v.name: v for v in actual}
        for tensor in declared:
            if tensor.name not in by_name:
                problems.append(f"{kind} {tensor.name!r} is missing (graph {kind}s: {', '.join(by_name) or 'none'})")
                continue
            dims = _io_dims(by_name[tensor.name])
            if len(dims) != len(tensor.shape):
                problems.append(f"{kind} {tensor.name!r} has rank {len(dims)}, the spec says {len(tensor.shape)}")
                continue
            for axis, (want, got) in enumerate(zip(tensor.shape, dims)):
                if isinstance(want, str) and isinstance(got, int):
                    static.append(f"{tensor.name}[{axis}] ({want}) = {got}")
                elif isinstance(want, int) and isinstance(got, int) and want != got:
                    problems.append(f"{kind} {tensor.name!r} axis {axis} is {got}, the spec says {want}")
    if static:
        problems.insert(0, "static dims where the spec wants symbolic ones: " + ", ".join(static)
                        + " (export traced them as constants: an example dim of 1, or a shape-dependent branch)")
    if problems:
        raise LatentfuseError(f"graph {spec.name!r}: " + "; ".join(problems))


# ---------------------------------------------------------------------- data-dependent shapes
def _constant_names(graph, outer: frozenset = frozenset()) -> set[str]:
    names = set(outer) | {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def find_data_dependent_shapes(model) -> list[Finding]:
    """Every node whose output shape depends on tensor values rather than on input shapes."""
    model = _load(model)
    findings: list[Finding] = []
    functions = {(f.domain, f.name) for f in model.functions}

    def visit(graph, tainted_outer: frozenset, const_outer: frozenset) -> None:
        constants = _constant_names(graph, const_outer)
        tainted = set(tainted_outer) | {i.name for i in graph.input if i.name not in constants}
        for index, node in enumerate(graph.node):
            label = _node_label(node, index)
            op = node.op_type
            if op in DATA_DEPENDENT_OPS and node.domain in DEFAULT_DOMAINS:
                findings.append(Finding(label, op, DATA_DEPENDENT_OPS[op]))
            if op in ("ScatterND", "ScatterElements") and node.domain in DEFAULT_DOMAINS:
                for attr in node.attribute:
                    if attr.name == "reduction" and attr.s not in (b"", b"none"):
                        findings.append(Finding(label, op, f"reduction={attr.s.decode()} (scatter-add style; "
                                                           "TensorRT's parser rejects scatter reductions)"))
            for i in SHAPE_OPERANDS.get(op, ()) if node.domain in DEFAULT_DOMAINS else ():
                if i < len(node.input) and node.input[i] and node.input[i] in tainted:
                    what = "K" if op == "TopK" else f"input {i} ({node.input[i]!r})"
                    findings.append(Finding(label, op, f"{what} sets the output shape and is computed from "
                                                       "input values, not from input shapes"))
            for attr in node.attribute:  # subgraphs see the enclosing scope
                graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for g in graphs:
                    visit(g, frozenset(tainted), frozenset(constants))
            if op in SHAPE_ONLY_OPS or op == "Constant":
                continue
            if (node.domain, op) in functions or any(x in tainted for x in node.input if x):
                tainted.update(o for o in node.output if o)

    visit(model.graph, frozenset(), frozenset())
    for fn in model.functions:
        # Inside a local function every formal input may carry values.
        fake = type("G", (), {})()
        fake.node, fake.initializer = fn.node, []
        fake.input = [type("I", (), {"name": n})() for n in fn.input]
        visit(fake, frozenset(), frozenset())
    return findings


def check_no_data_dependent_shapes(model, name: str = "graph") -> None:
    findings = find_data_dependent_shapes(model)
    if findings:
        listed = "; ".join(str(f) for f in findings[:8]) + (f"; ... {len(findings) - 8} more" if len(findings) > 8 else "")
        raise LatentfuseError(f"{name} has data-dependent shapes, which TensorRT cannot build: {listed} "
                              f"(use a TensorRT-safe MoE dispatch: MoEDiT.set_moe_dispatch('dense' or 'grouped'))")


# ---------------------------------------------------------------------- TensorRT op support
@functools.lru_cache(maxsize=4)
def load_trt_ops(path: str | os.PathLike = TRT_OPS_PATH) -> dict:
    """The TensorRT ONNX-parser support table: ``{"tensorrt_version", "opset_range", "source",
    "operators": {op: {"supported", "types", "restrictions"}}}``."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatentfuseError(f"TensorRT operator table not found: {path}") from None
    except json.JSONDecodeError as err:
        raise LatentfuseError(f"TensorRT operator table {path} is not valid JSON: {err}") from None
    if not isinstance(table.get("operators"), dict):
        raise LatentfuseError(f"{path} has no 'operators' table")
    return table


def op_types(model) -> dict[tuple[str, str], int]:
    """(domain, op type) -> count over the graph, its subgraphs and its local functions."""
    model = _load(model)
    counts: dict[tuple[str, str], int] = {}
    nodes = [n for g in _graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for n in nodes:
        key = (n.domain or "", n.op_type)
        counts[key] = counts.get(key, 0) + 1
    return counts


def unsupported_trt_ops(model, table: dict | None = None) -> list[Finding]:
    model = _load(model)
    table = table or load_trt_ops()
    ops = table["operators"]
    functions = {(f.domain, f.name) for f in model.functions}
    findings = []
    lo, hi = table.get("opset_range", (0, 10 ** 6))
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not lo <= imp.version <= hi:
            findings.append(Finding("<model>", "opset", f"ONNX opset {imp.version} is outside TensorRT "
                                                        f"{table.get('tensorrt_version')}'s range {lo}-{hi}"))
    for (domain, op), count in sorted(op_types(model).items()):
        if (domain, op) in functions:
            continue  # a model-local function: its body is checked instead
        if domain not in DEFAULT_DOMAINS:
            findings.append(Finding("*", op, f"custom domain {domain!r} ({count} nodes) needs a TensorRT plugin"))
        elif op not in ops:
            findings.append(Finding("*", op, f"not in TensorRT {table.get('tensorrt_version')}'s ONNX operator table"))
        elif not ops[op].get("supported", False):
            findings.append(Finding("*", op, f"marked unsupported by TensorRT {table.get('tensorrt_version')} "
                                             f"({ops[op].get('restrictions', 'no parser support')})"))
    return findings


# ONNX element types -> the names of TensorRT's operator table (FP8 is FLOAT8E4M3FN only).
TRT_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 16: "BF16",
                  17: "FP8", 21: "UINT4", 22: "INT4", 23: "FP4", 11: "DOUBLE", 4: "UINT16", 5: "INT16", 12: "UINT32",
                  13: "UINT64", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 8: "STRING"}
DATA_INPUT = {"Where": 1}     # the input whose type the table's "types" describe (default: the first)


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor of the main graph that ONNX type inference can tell."""
    import onnx

    model = _load(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the graph itself declares
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def unsupported_trt_types(model, table: dict | None = None) -> list[Finding]:
    """Nodes whose data input has a type outside the op's ``types`` in TensorRT's table (e.g. an FP8
    tensor into a MatMul, a FLOAT8E5M2 DequantizeLinear), and Q/DQ nodes with a non-zero zero point
    (the table's restriction). Tensors whose type inference cannot tell are not judged."""
    from onnx import numpy_helper

    model = _load(model)
    ops = (table or load_trt_ops())["operators"]
    types = tensor_types(model)
    consts = {i.name: i for i in model.graph.initializer if not i.external_data}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    findings = []
    for index, node in enumerate(model.graph.node):
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in ops:
            continue
        allowed = ops[node.op_type].get("types")
        i = DATA_INPUT.get(node.op_type, 0)
        if allowed and i < len(node.input) and node.input[i] in types:
            got = TRT_TYPE_NAMES.get(types[node.input[i]], str(types[node.input[i]]))
            if got not in allowed:
                findings.append(Finding(_node_label(node, index), node.op_type,
                                        f"input type {got} is not one TensorRT takes ({', '.join(allowed)})"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in consts:
            zp = consts[node.input[2]]
            nonzero = (any(b != 0 for b in zp.raw_data) if zp.data_type in (17, 18, 19, 20, 21, 22, 23)
                       else bool(numpy_helper.to_array(zp).any()))
            if nonzero:
                findings.append(Finding(_node_label(node, index), node.op_type, "zero point is not 0 (TensorRT "
                                                                                "takes symmetric quantization only)"))
    return findings


def check_trt_ops(model, name: str = "graph") -> None:
    findings = unsupported_trt_ops(model)
    findings += unsupported_trt_types(model) if not findings else []
    if findings:
        table = load_trt_ops()
        raise LatentfuseError(f"{name} uses ops TensorRT {table.get('tensorrt_version')} cannot parse: "
                              + "; ".join(str(f) for f in findings))
