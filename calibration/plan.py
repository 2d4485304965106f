"""The FP16 precision plan: which nodes of each graph stay FP32, why, and the measured value behind it.

TensorRT 11 builds only strongly typed networks, so precision lives in the ONNX graph: export converts
each FP32 graph to FP16 except for the nodes this plan lists (:mod:`latentfuse.calibration.fp16`). The decision is made
from measurements on a calibration set (:mod:`latentfuse.calibration.ranges`), in three rules:

1. **Range.** A float tensor is *FP16-unsafe* when its measured max |x| exceeds ``range_fraction`` x 65504
   (default 1/4, i.e. 16376), or when more than ``flush_fraction`` of its non-zero values would round to
   zero in FP16. Every node that produces or consumes an unsafe tensor stays FP32, so that no Cast to
   FP16 is ever placed on it (a consumer left in FP16 would get the tensor cast to inf). Initializers
   are static, so for them the limit is the FP16 maximum itself. Why a 4x margin: the calibration set
   is finite and the deployed range is not - larger resolutions lengthen the sums in attention and
   normalisation, unseen images and prompts push activations further, and TensorRT may fuse a residual
   add into the producer; two binary orders of headroom cover that while leaving genuinely large
   tensors on the FP32 side (the T5 FFN ``wo`` output of bf16-trained checkpoints passes 65504, which is
   why transformers' T5 sets ``_keep_in_fp32_modules = ["wo"]``). ModelOpt AutoCast
   applies the same rule with a stricter default (``data_max=512``); pass ``range_fraction=512/65504``
   to reproduce it.
2. **Measured FP16 error of normalisation statistics and softmax.** For every Softmax / LogSoftmax /
   *Normalization / Reduce* / Pow / Sqrt / Reciprocal node, the node alone is run on its captured
   calibration inputs twice: FP32, and with FP16 inputs and output (ONNX Runtime CPU, which computes an
   FP16 node without an FP16 kernel in FP32 between the roundings - the same model as TensorRT's FP16
   kernels with FP32 accumulation; ``onnx.reference`` where ORT cannot load the node). If
   ``max|y16 - y32| / max|y32|`` exceeds ``norm_tolerance`` (default 1e-2, twenty times FP16's unit
   roundoff 2^-11, so rounding alone never triggers it) the node stays FP32, and so do the producers of
   its inputs (through reshapes): the measured error includes rounding those inputs to FP16.
3. **Statistics chains.** A kept statistic (e.g. ``ReduceMean(x^2)`` of a decomposed RMSNorm) keeps the
   element-wise nodes that still operate on the reduced statistic (``+eps``, ``Sqrt``, ``Reciprocal``:
   same element count as the statistic) in FP32 too, until it is multiplied back onto the full tensor.

The plan is JSON (``latentfuse-precision-plan/1``): per graph the FP32 node list with reason, tensor and
measured value, plus the thresholds and a description of the calibration set (:func:`save_plan`,
:func:`load_plan`, which the bundle writer reads it with).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from latentfuse.calibration.ranges import FP16_MAX, TensorRange, load_model, measure_ranges, run_tensors
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.manifest import write_json

PLAN_FORMAT = "latentfuse-precision-plan/1"


# Normalisation statistics and softmax: the ops whose FP16 error is measured node by node (rule 2).
STATISTIC_OPS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "RMSNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
    "Pow", "Sqrt", "Reciprocal",
})
# Element-wise ops through which a reduced statistic travels before it meets the full tensor (rule 3).
CHAIN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Max", "Clip", "Identity",
                       "Cast", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Neg", "Exp", "Log"})
# Ops that only move data: FP32 has to start at the compute node before them.
MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Expand", "Flatten",
                          "Slice", "Split", "Concat", "Gather"})
# Ops that never compute on float values, so their precision is irrelevant.
_NON_FLOAT_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "NonZero"})


@dataclass
class Thresholds:
    """The numbers of the three rules (see the module docstring for the reasoning)."""

    range_fraction: float = 0.25
    flush_fraction: float = 0.5
    norm_tolerance: float = 1e-2

    @property
    def range_limit(self) -> float:
        return self.range_fraction * FP16_MAX

    def to_dict(self) -> dict:
        return {**asdict(self), "range_limit": self.range_limit, "fp16_max": FP16_MAX}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Thresholds":
        return cls(**{k: float(d[k]) for k in ("range_fraction", "flush_fraction", "norm_tolerance") if k in d})


@dataclass
class KeptNode:
    """One node kept in FP32: the first rule that fired, the tensor it looked at, the measured value."""

    name: str
    op_type: str
    reason: str  # range | initializer_range | underflow | fp16_error | fp16_error_input | statistics_chain | escalated
    tensor: str
    value: float


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "nan" if x != x else "-inf")


def unsafe_tensors(stats: Mapping[str, TensorRange], initializers: set[str],
                   thresholds: Thresholds) -> dict[str, tuple[str, float]]:
    """``{tensor: (reason, value)}`` for every tensor that must never be cast to FP16 (rule 1)."""
    out = {}
    for name, r in stats.items():
        if name in initializers:
            if r.max_abs > FP16_MAX:
                out[name] = ("initializer_range", r.max_abs)
            elif r.flush_fraction > thresholds.flush_fraction:
                out[name] = ("underflow", r.flush_fraction)
        elif r.max_abs > thresholds.range_limit:
            out[name] = ("range", r.max_abs)
        elif r.flush_fraction > thresholds.flush_fraction:
            out[name] = ("underflow", r.flush_fraction)
    return out


# --- rule 2: measured FP16 error of one node -----------------------------------------------------


def _single_node_model(model, node, input_types: Sequence[int]):
    import onnx
    from onnx import helper

    inputs = [helper.make_tensor_value_info(f"in{i}", t, None) if name else None
              for i, (name, t) in enumerate(zip(node.input, input_types))]
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    new.input.extend([f"in{i}" if name else "" for i, name in enumerate(node.input)])
    del new.output[:]
    new.output.extend([f"out{j}" if name else "" for j, name in enumerate(node.output)])
    outputs = [helper.make_tensor_value_info(f"out{j}", 0, None) for j, name in enumerate(node.output) if name]
    graph = helper.make_graph([new], "single_node", [i for i in inputs if i is not None], outputs)
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


class _NodeRunner:
    """Run one node in FP32 and in FP16 (ONNX Runtime; ``onnx.reference`` where ORT has no kernel)."""

    def __init__(self, model, node, values: Sequence[np.ndarray | None]):
        import onnx
        from onnx.helper import np_dtype_to_tensor_dtype

        self.float_inputs = [v is not None and np.issubdtype(np.asarray(v).dtype, np.floating) for v in values]
        self.runners = {}
        for key, ftype in (("fp32", onnx.TensorProto.FLOAT), ("fp16", onnx.TensorProto.FLOAT16)):
            types = [ftype if f else (np_dtype_to_tensor_dtype(np.asarray(v).dtype) if v is not None else 0)
                     for f, v in zip(self.float_inputs, values)]
            self.runners[key] = self._make(_single_node_model(model, node, types))

    @staticmethod
    def _make(m):
        import onnxruntime as ort

        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            return lambda feed: sess.run(None, feed)
        except Exception:  # no fp16 kernel on CPU: fall back to the ONNX reference evaluator
            from onnx.reference import ReferenceEvaluator

            ref = ReferenceEvaluator(m)

            def run(feed):
                with np.errstate(over="ignore", invalid="ignore"):  # FP16 overflow is what we measure
                    return ref.run(None, feed)

            return run

    def error(self, values: Sequence[np.ndarray | None]) -> float:
        feed32, feed16 = {}, {}
        for i, (value, is_float) in enumerate(zip(values, self.float_inputs)):
            if value is None:
                continue
            if is_float:
                feed32[f"in{i}"] = np.asarray(value, dtype=np.float32)
                with np.errstate(over="ignore"):  # overflow to inf is part of what is measured
                    feed16[f"in{i}"] = np.asarray(value, dtype=np.float32).astype(np.float16)
            else:
                feed32[f"in{i}"] = feed16[f"in{i}"] = np.asarray(value)
        y32 = self.runners["fp32"](feed32)
        y16 = self.runners["fp16"](feed16)
        worst = 0.0
        for a, b in zip(y32, y16):
            if not np.issubdtype(np.asarray(a).dtype, np.floating):
                continue
            a = np.asarray(a, np.float64)
            b = np.asarray(b, np.float64)
            fin = np.isfinite(a)
            if not np.array_equal(fin, np.isfinite(b)):
                return math.inf  # fp16 created inf / nan where fp32 had none
            if not fin.any():
                continue
            scale = max(float(np.abs(a[fin]).max()), 1e-30)
            worst = max(worst, float(np.abs(a[fin] - b[fin]).max()) / scale)
        return worst


def measure_node_errors(model, feeds, candidates, *, chunk_size: int = 2048, progress=False) -> dict[str, float]:
    """Worst normalised FP16 error over ``feeds`` of each candidate node run alone (rule 2)."""
    from onnx import numpy_helper

    if not candidates:
        return {}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    # Pack the nodes' runtime inputs into chunks without splitting one node's inputs.
    chunks: list[tuple[list[str], list]] = [([], [])]
    for node in candidates:
        needed = [n for n in node.input if n and n not in inits and n not in graph_inputs]
        names, members = chunks[-1]
        if members and len(set(names) | set(needed)) > chunk_size:
            chunks.append(([], []))
            names, members = chunks[-1]
        names.extend(n for n in needed if n not in names)
        members.append(node)

    errors = {node.name: 0.0 for node in candidates}
    runners: dict[str, _NodeRunner] = {}
    for names, nodes in chunks:
        def visit(index, values, nodes=nodes):
            for node in nodes:
                vals = []
                for n in node.input:
                    if not n:
                        vals.append(None)
                    elif n in inits:
                        vals.append(inits[n])
                    elif n in graph_inputs:
                        vals.append(feeds[index][n])
                    else:
                        vals.append(values[n])
                if node.name not in runners:
                    runners[node.name] = _NodeRunner(model, node, vals)
                errors[node.name] = max(errors[node.name], runners[node.name].error(vals))

        if names:
            run_tensors(model, feeds, names, visit, chunk_size=len(names), progress=progress)
        else:  # every input is static or a graph input
            for index in range(len(feeds)):
                visit(index, {})
    return errors


# --- the plan ------------------------------------------------------------------------------------


@dataclass
class Measurements:
    """What calibration measured on one graph: tensor statistics and per-node FP16 errors (rule 2)."""

    stats: dict[str, TensorRange]
    errors: dict[str, float]


def measure_graph(model, feeds: Sequence[Mapping[str, np.ndarray]], *, chunk_size: int = 256,
                  progress: bool | str = False) -> Measurements:
    """Run the calibration measurements of one FP32 graph (ranges of every tensor, the FP16 error of
    every normalisation-statistics / softmax node)."""
    model = load_model(model)
    ensure_node_names(model)
    stats = measure_ranges(model, feeds, chunk_size=chunk_size, progress=progress)
    candidates = [n for n in model.graph.node if n.op_type in STATISTIC_OPS and any(o in stats for o in n.output)]
    errors = measure_node_errors(model, feeds, candidates, chunk_size=max(chunk_size, 2048),
                                 progress=f"{progress} fp16 error" if isinstance(progress, str) else progress)
    return Measurements(stats, errors)


def decide(model, measured: Measurements, thresholds: Thresholds | None = None, *, escalate: bool = False) -> dict:
    """Apply the three rules to the measurements; the per-graph entry of the plan file.

    ``escalate`` (the second rung of :func:`latentfuse.calibration.calibrate.calibrate_bundle`, climbed when the
    whole graph's FP16 error is still too large) keeps *every* normalisation / softmax node FP32 whatever
    its measured error (reason ``escalated``), with the producers of its inputs. Keeping the node alone
    would change nothing measurable: its FP16 error is that of its rounded inputs and output.
    """
    thresholds = thresholds or Thresholds()
    model = load_model(model)
    ensure_node_names(model)
    stats, errors = measured.stats, measured.errors
    initializers = {i.name for i in model.graph.initializer}
    unsafe = unsafe_tensors(stats, initializers, thresholds)

    kept: dict[str, KeptNode] = {}
    nodes = [n for n in model.graph.node if n.op_type not in _NON_FLOAT_OPS]
    for node in nodes:  # rule 1: producer or consumer of an unsafe tensor
        for tensor in list(node.output) + list(node.input):
            if tensor in unsafe:
                reason, value = unsafe[tensor]
                kept[node.name] = KeptNode(node.name, node.op_type, reason, tensor, float(value))
                break
    for node in nodes:  # rule 2
        if node.name in kept or node.name not in errors:
            continue
        failed = errors[node.name] > thresholds.norm_tolerance
        if failed or escalate:
            reason = "fp16_error" if failed else "escalated"
            kept[node.name] = KeptNode(node.name, node.op_type, reason, node.output[0], float(errors[node.name]))
            _keep_producers(model, node, kept, stats)
    _propagate_statistics(model, stats, kept)  # rule 3

    counts: dict[str, int] = {}
    for k in kept.values():
        counts[k.reason] = counts.get(k.reason, 0) + 1
    activations = [r for n, r in stats.items() if n not in initializers]
    return {
        "policy": "mixed",
        "num_nodes": len(model.graph.node),
        "num_fp32_nodes": len(kept),
        "reason_counts": counts,
        "fp32_nodes": [{**asdict(k), "value": _finite(k.value)} for k in kept.values()],
        "statistic_errors": {k: _finite(v) for k, v in sorted(errors.items(), key=lambda kv: -kv[1])},
        "max_abs": _finite(max((r.max_abs for r in activations), default=0.0)),
        "nonfinite_tensors": sorted(n for n, r in stats.items() if r.nonfinite),
        "max_subnormal_fraction": max((r.subnormal_fraction for r in activations), default=0.0),
    }


def plan_graph(
    model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    thresholds: Thresholds | None = None,
    *,
    escalate: bool = False,
    chunk_size: int = 256,
    progress: bool | str = False,
) -> dict:
    """The precision plan entry of one FP32 graph measured on ``feeds`` (a list of ``{input: array}``):
    :func:`measure_graph` then :func:`decide`."""
    model = load_model(model)
    ensure_node_names(model)
    measured = measure_graph(model, feeds, chunk_size=chunk_size, progress=progress)
    return decide(model, measured, thresholds, escalate=escalate)


REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp"})


def statistic_tensors(model, stats: Mapping[str, TensorRange]) -> set[str]:
    """Tensors that hold a reduced statistic: Reduce* outputs and element-wise functions of them of the
    same (reduced) size - ``mean(x^2) + eps``, its ``Sqrt``, its ``Reciprocal`` - in a decomposed norm."""
    found: set[str] = set()
    for node in model.graph.node:  # node order is topological
        if node.op_type in REDUCE_OPS:
            found.update(o for o in node.output if o in stats)
        elif node.op_type in CHAIN_OPS:
            sizes = {stats[i].numel for i in node.input if i in found}
            found.update(o for o in node.output if o in stats and stats[o].numel in sizes)
    return found


def _propagate_statistics(model, stats: Mapping[str, TensorRange], kept: dict[str, KeptNode]) -> None:
    """Rule 3: carry FP32 from a kept statistic through the element-wise nodes on the reduced tensor,
    until it is multiplied back onto the full-size tensor (that node stays FP16)."""
    statistic = statistic_tensors(model, stats)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    frontier = [k.name for k in kept.values() if any(o in statistic for o in by_name[k.name].output)]
    visited = set(frontier)
    while frontier:
        node = by_name[frontier.pop()]
        for out in node.output:
            if out not in statistic:
                continue
            for consumer in consumers.get(out, []):
                if not any(o in statistic for o in consumer.output):
                    continue  # the statistic meets the full tensor here: the chain ends
                if consumer.name not in kept:
                    kept[consumer.name] = KeptNode(consumer.name, consumer.op_type, "statistics_chain", out,
                                                   float(stats[out].max_abs))
                if consumer.name not in visited:
                    visited.add(consumer.name)
                    frontier.append(consumer.name)


def _keep_producers(model, node, kept: dict[str, KeptNode], stats: Mapping[str, TensorRange]) -> None:
    """Keep the producers of ``node``'s float inputs in FP32 (through data-movement ops).

    A node kept for its measured FP16 error must also *read* FP32: the error measured on the single
    node includes rounding its inputs to FP16, which keeping only the node would not remove (a Softmax
    on logits of magnitude 5000 is wrong in FP16 because the logits are, not because of its kernel).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    stack = [name for name in node.input if name in producer and name in stats]
    seen = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        up = producer[tensor]
        if up.op_type == "Cast":
            continue
        if up.name not in kept:
            kept[up.name] = KeptNode(up.name, up.op_type, "fp16_error_input", tensor, float(stats[tensor].max_abs))
        if up.op_type in MOVEMENT_OPS:  # a reshape computes nothing: the value comes from further up
            stack.extend(name for name in up.input if name in producer and name in stats)


def make_plan(graph_plans: Mapping[str, dict], thresholds: Thresholds, calibration_set: Mapping) -> dict:
    return {
        "format": PLAN_FORMAT,
        "thresholds": thresholds.to_dict(),
        "calibration_set": dict(calibration_set),
        "graphs": dict(graph_plans),
    }


# --- the plan file (written here, read by the bundle writer, :mod:`latentfuse.export.fp16`) -------------


def fp32_node_names(plan_for_graph: Mapping) -> list[str]:
    return [entry["name"] for entry in plan_for_graph.get("fp32_nodes", [])]


def save_plan(plan: Mapping, path: str | os.PathLike) -> Path:
    return write_json(path, plan, compact_lists=False)


def load_plan(path: str | os.PathLike) -> dict:
    import json

    path = Path(path)
    if not path.is_file():
        raise LatentfuseError(f"precision plan {path} does not exist (run `latentfuse calibrate` first)")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LatentfuseError(f"precision plan {path} is not valid JSON: {err}") from None
    if plan.get("format") != PLAN_FORMAT:
        raise LatentfuseError(f"{path} is not a precision plan (format {plan.get('format')!r}, expected {PLAN_FORMAT!r})")
    return plan


def ensure_node_names(model) -> None:
    """Name unnamed nodes (``<op>_<index>``) so that the plan can refer to every node."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
