"""FP32 ONNX graph + precision plan -> mixed-precision FP16 ONNX graph for a strongly typed TensorRT build,
and the error of the converted graph against the FP32 one.

TensorRT 11 removed ``BuilderFlag.FP16``: the precision of every tensor comes from the ONNX graph. The
conversion itself is ONNX Runtime's ``onnxruntime.transformers.float16.convert_float_to_float16`` (the
maintained fork of onnxconverter-common's converter): weights and activations become FP16, the nodes the
plan (:mod:`latentfuse.calibration.plan`: its rules and its file format) keeps in FP32 are block-listed - they keep
FP32 weights - and Cast nodes are inserted at every FP32-island boundary. Graph inputs and outputs keep their FP32
types by default (``keep_io_types``), so the runtime feeds and reads the same dtypes as for the FP32 graph.

Ops in the converter's default block list (``TopK``, ``Range``, ``CumSum``, ``Min``, ``Max``, ...) also
stay FP32: the MoE router's top-2 selection runs in FP32, which keeps expert choice identical.

Calibration converts and compares in memory (:func:`compare`, its whole-graph check); the bundle writer
converts each exported graph file with the same :func:`convert_model` (:mod:`latentfuse.export.fp16`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from latentfuse.calibration.plan import ensure_node_names, fp32_node_names
from latentfuse.model.errors import LatentfuseError


def convert_model(model, plan_for_graph: Mapping, *, keep_io_types: bool | Sequence[str] = True):
    """Mixed-precision copy of ``model`` (a ModelProto with its weights loaded) following the plan entry.

    ``plan_for_graph`` is one ``plan["graphs"][name]`` entry: ``{"policy": "mixed" | "fp32",
    "fp32_nodes": [{"name": ...}, ...]}``. Policy ``fp32`` returns an unchanged copy.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel


    work = onnx.ModelProto()
    work.CopyFrom(model)
    ensure_node_names(work)  # the plan names unnamed nodes the same way
    if plan_for_graph.get("policy", "mixed") == "fp32":
        return work
    large = work.ByteSize() > 1_800_000_000
    names = {n.name for n in work.graph.node}
    block = fp32_node_names(plan_for_graph)
    unknown = [b for b in block if b not in names]
    if unknown:
        raise LatentfuseError(
            f"precision plan names {len(unknown)} node(s) absent from graph {work.graph.name!r} "
            f"(e.g. {unknown[0]!r}): the plan was made for another export; re-run `latentfuse calibrate`")
    converted = convert_float_to_float16(
        work,
        keep_io_types=keep_io_types if isinstance(keep_io_types, bool) else list(keep_io_types),
        node_block_list=block,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST),
        # Clamp constants to the representable range rather than to inf; values outside it belong to
        # nodes the plan keeps in FP32, whose initializers the converter leaves untouched.
        min_positive_val=5.96e-08,
        max_finite_val=65504.0,
        # ONNX shape inference cannot take an in-memory model over protobuf's 2 GB; the exporter's
        # value_info is then used as is.
        disable_shape_infer=large,
    )
    drop_duplicate_nodes(converted)
    drop_cast_round_trips(converted)
    # The converter appends the graph-input/output Casts at the end; TensorRT's parser wants node order.
    OnnxModel.graph_topological_sort(converted.graph)
    if not large:
        onnx.checker.check_model(converted)
    return converted


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor the graph declares (inputs, outputs, initializers, value_info)."""
    types = {i.name: i.data_type for i in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in model.graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    return types


def drop_duplicate_nodes(model) -> int:
    """Remove exact duplicates of a node (same op, inputs, outputs, attributes); return how many.

    The converter gives every block-listed consumer of an FP16 tensor its own ``<tensor>_cast_to_fp32``
    Cast, so two FP32 nodes reading one tensor produce two identical Casts with the same output name,
    which breaks single static assignment. One copy serves both readers.
    """
    seen, keep = set(), []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        keep.append(node)
    removed = len(model.graph.node) - len(keep)
    if removed:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return removed


def drop_cast_round_trips(model) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs between two FP32 nodes; return how many were removed.

    The converter handles each block-listed node on its own, so two adjacent FP32 nodes exchange their
    tensor through a Cast to FP16 and back - exactly the overflow the plan keeps them in FP32 to avoid
    (a 1e6 activation between them becomes inf). Consumers of the second Cast are rewired to the FP32
    source; the first Cast is removed too when nothing else reads its FP16 output.
    """
    import onnx

    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = tensor_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename: dict[str, str] = {}
    dead = set()
    for node in model.graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == FLOAT else None
        if first is None or cast_to(first) != FLOAT16 or types.get(first.input[0]) != FLOAT:
            continue
        if node.output[0] in graph_outputs:
            continue
        rename[node.output[0]] = first.input[0]
        dead.add(id(node))
    if not rename:
        return 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    readers = {name for n in model.graph.node if id(n) not in dead for name in n.input}
    for node in model.graph.node:
        if cast_to(node) == FLOAT16 and node.output[0] not in readers and node.output[0] not in graph_outputs \
                and types.get(node.input[0]) == FLOAT and any(v == node.input[0] for v in rename.values()):
            dead.add(id(node))
    keep = [n for n in model.graph.node if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(rename)


def emulate_fp16_storage(model):
    """An FP32-arithmetic twin of a mixed-precision graph that rounds every FP16 tensor to FP16.

    ONNX Runtime's CPU provider has no FP16 kernel for many ops (MatMul, Conv, ...) and silently runs them
    in FP32, fusing away the FP16 tensors between consecutive such nodes - so an FP16 graph run as is
    on CPU hides overflow. Here every node that reads FP16 data reads it through a Cast to FP32 and
    writes its FP16 outputs through a Cast back, which is what an FP16 TensorRT kernel with FP32
    accumulation does: FP32 arithmetic inside a node, FP16 storage between nodes. Run it with graph
    optimisations disabled so the Casts stay.
    """
    import onnx
    from onnx import helper

    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    work = onnx.ModelProto()
    work.CopyFrom(model)
    types = tensor_types(work)
    nodes = []
    for k, node in enumerate(work.graph.node):
        if node.op_type == "Cast" or not any(types.get(i) == FLOAT16 for i in node.input if i):
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and types.get(name) == FLOAT16:
                up = f"{name}__emu32_{k}_{i}"
                nodes.append(helper.make_node("Cast", [name], [up], to=FLOAT, name=f"emu_in_{k}_{i}"))
                node.input[i] = up
        outs = []
        for j, name in enumerate(node.output):
            if name and types.get(name) == FLOAT16:
                inner = f"{name}__emu32"
                node.output[j] = inner
                outs.append(helper.make_node("Cast", [inner], [name], to=FLOAT16, name=f"emu_out_{k}_{j}"))
        nodes.append(node)
        nodes.extend(outs)
    del work.graph.node[:]
    work.graph.node.extend(nodes)
    # Types of the renamed tensors changed: re-infer them (ONNX Runtime loads a typed graph much faster).
    del work.graph.value_info[:]
    try:
        work = onnx.shape_inference.infer_shapes(work)
    except Exception:  # >2 GB or an op without inference: ORT infers the types itself, only slower
        pass
    return work


def count_casts(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Cast")


def float_weight_bytes(model) -> dict[str, int]:
    """Bytes of FP32 and FP16 initializers (what the conversion saves)."""
    import onnx

    out = {"fp32": 0, "fp16": 0}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type == onnx.TensorProto.FLOAT:
            out["fp32"] += 4 * n
        elif init.data_type == onnx.TensorProto.FLOAT16:
            out["fp16"] += 2 * n
    return out


# --- FP16 vs FP32 error --------------------------------------------------------------------------


def _runner(model, optimize: bool = True):
    """Callable ``feed -> outputs`` with ONNX Runtime CPU; ``onnx.reference`` if ORT cannot load it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        blob = model.SerializeToString()
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return "onnxruntime", lambda feed: dict(zip(names, sess.run(None, feed)))
    except Exception as err:
        if "NOT_IMPLEMENTED" not in str(err) and "Could not find an implementation" not in str(err):
            raise
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(model)
        names = [o.name for o in model.graph.output]
        return "onnx.reference", lambda feed: dict(zip(names, ref.run(None, feed)))


def compare(fp32_model, fp16_model, feeds: Sequence[Mapping[str, np.ndarray]], *, emulate: bool = True) -> dict:
    """Error of the FP16 graph against the FP32 graph on ``feeds``, per output and overall.

    ``emulate=True`` runs :func:`emulate_fp16_storage` of the FP16 graph in ONNX Runtime (fast, FP32
    accumulation like TensorRT); ``emulate=False`` runs the FP16 graph itself in ``onnx.reference``
    (NumPy FP16 arithmetic throughout: slow, small shapes only, a pessimistic bound).

    ``max_abs``: worst absolute error; ``rel``: worst ``max|y16-y32| / max|y32|`` over feeds;
    ``nonfinite``: inf/nan values the FP16 graph produced where FP32 had finite values.
    """
    backend32, run32 = _runner(fp32_model)
    if emulate:
        backend16, run16 = _runner(emulate_fp16_storage(fp16_model), optimize=False)
        backend16 = f"{backend16} (fp16 storage emulated)" if backend16 == "onnxruntime" else backend16
    else:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(fp16_model)
        names16 = [o.name for o in fp16_model.graph.output]

        def run16(feed):
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is what we measure
                return dict(zip(names16, ref.run(None, feed)))

        backend16 = "onnx.reference"
    per_output: dict[str, dict] = {}
    for feed in feeds:
        inputs16 = {i.name: i.type.tensor_type.elem_type for i in fp16_model.graph.input}
        feed16 = {k: (v.astype(np.float16) if inputs16.get(k) == 10 else v) for k, v in feed.items()
                  if k in inputs16}
        y32 = run32({k: v for k, v in feed.items() if k in inputs16})
        y16 = run16(feed16)
        for name, a in y32.items():
            a = np.asarray(a, np.float64)
            b = np.asarray(y16[name], np.float64)
            entry = per_output.setdefault(name, {"max_abs": 0.0, "rel": 0.0, "mean_abs": 0.0, "nonfinite": 0, "n": 0})
            fin = np.isfinite(a)
            bad = int((fin & ~np.isfinite(b)).sum())
            entry["nonfinite"] += bad
            ok = fin & np.isfinite(b)
            if ok.any():
                err = np.abs(a[ok] - b[ok])
                entry["max_abs"] = max(entry["max_abs"], float(err.max()))
                entry["rel"] = max(entry["rel"], float(err.max()) / max(float(np.abs(a[ok]).max()), 1e-30))
                entry["mean_abs"] += float(err.mean())
            entry["n"] += 1
    for entry in per_output.values():
        entry["mean_abs"] /= max(entry.pop("n"), 1)
        if entry["nonfinite"]:
            entry["rel"] = math.inf
    overall = {
        "max_abs": max((e["max_abs"] for e in per_output.values()), default=0.0),
        "rel": max((e["rel"] for e in per_output.values()), default=0.0),
        "nonfinite": sum(e["nonfinite"] for e in per_output.values()),
    }
    return {"backend": backend16, "outputs": per_output, **overall}
