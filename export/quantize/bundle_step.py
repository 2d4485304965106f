"""The export step of an int8 / fp8 bundle: calibrate, choose, export, measure each quantized graph, and its
manifest entry."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from latentfuse.export.quantize.calibrate import choose_layers, format_error, LayerPlan, QuantizedGraph
from latentfuse.export.quantize.modelopt_utils import modelopt_version, require_modelopt
from latentfuse.export.quantize.onnx_qdq import export_quantized, graph_quantized_layers
from latentfuse.export.quantize.options import FAKE_QUANT_PARITY, FAKE_QUANT_PEER, QuantOptions
from latentfuse.export.quantize.ort_report import ort_kernel_report, ort_outputs, ort_session
from latentfuse.export.quantize.stats import ErrorStats, ErrorSum, json_number, torch_feeds
from latentfuse.model.errors import LatentfuseError


def quantize_bundle_graphs(tmp: Path, results: dict, specs: Mapping, components, options: QuantOptions, *,
                           opset: int, progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Replace the chosen graphs of a bundle being written in ``tmp`` by quantized ones.

    ``results``: graph name -> :class:`latentfuse.export.onnx.ExportedGraph` of the FP32 export (updated in place).
    Returns ``{"graphs": {name: manifest "quantization" entry}, "calibration": provenance}``.
    """
    from tqdm.auto import tqdm

    from latentfuse.calibration.quant_inputs import calibration_inputs

    require_modelopt(options.precision)
    log = log or (lambda s: tqdm.write(s))
    targets = [n for n, s in specs.items() if options.quantizes(s.kind)]
    missing = [k for k in options.graphs if not any(s.kind == k for s in specs.values())]
    if missing:   # the optional fidelity decoder (model.fidelity): asked for and absent is an error, not nothing
        raise LatentfuseError(f"the model has no graph of kind {', '.join(missing)} to quantize")
    heads = [s.head for s in specs.values() if s.kind == "dit"]
    recorded = calibration_inputs(components, heads, sources=options.calibration_data or None,
                                  samples=options.calibration_samples, seed=options.seed, progress=progress)
    entries = {}
    stage = Path(tempfile.mkdtemp(prefix=".quant-", dir=tmp))
    try:
        for name in targets:
            spec = specs[name]
            feeds = recorded.feeds.get(name) or []
            if not feeds:
                raise LatentfuseError(f"calibration recorded no inputs for graph {name!r}")
            batches = torch_feeds(spec, feeds)
            graph = QuantizedGraph(spec, spec.module(components), options.precision, options.level, batches)
            plan = choose_layers(graph, options.layer_tolerance, options.graph_tolerance,
                                 sensitivity_rows=options.sensitivity_rows, seed=options.seed,
                                 progress=name if progress else False)
            if not plan.quantized:
                entries[name] = _entry(graph, plan, options, None, None, None, None)
                entries[name]["policy"] = "fp32"
                log(f"  {name}: every {options.level} layer stays FP32 (no layer within the tolerances)")
                continue
            result = export_quantized(graph, stage, opset)
            if options.target == "onnxruntime":
                result = _keep_cpu_dequantized_fp32(graph, plan, result, stage, opset, log)
                if not plan.quantized:
                    entries[name] = _entry(graph, plan, options, None, None, None, None)
                    entries[name]["policy"] = "fp32"
                    log(f"  {name}: ONNX Runtime runs none of its quantized layers as an integer kernel: FP32")
                    continue
            session = ort_session(result.path)
            ort_out = ort_outputs(session, spec, graph.batches)
            acc_fp32, acc_fq = ErrorSum(), ErrorSum()
            fake = _fake_outputs(graph)
            for y, r, f in zip(ort_out, graph.references, fake):
                acc_fp32.add(y, r)
                acc_fq.add(y, f)
            kernels = ort_kernel_report(result.path, plan.quantized) if options.precision == "int8" else None
            entries[name] = _entry(graph, plan, options, acc_fp32.stats(), acc_fq.stats(), kernels,
                                   graph_quantized_layers(str(result.path)))
            parity = fake_quant_parity(graph, result.path)
            entries[name]["parity_vs_fake_quant"] = {
                "bound": FAKE_QUANT_PARITY, "metric": "relative RMS",
                "rule": f"ONNX Runtime within {FAKE_QUANT_PARITY:g} of the fake-quant model, or at most "
                        f"{FAKE_QUANT_PEER:g}x its distance from FP32", "rows": parity}
            bad = [r for r in parity if not r["passed"]]
            if bad:
                raise LatentfuseError(f"graph {name!r}: the exported Q/DQ graph on ONNX Runtime differs from ModelOpt's "
                                      f"fake-quantized model by {bad[0]['rel_rms']} (relative RMS) at {bad[0]['dims']} "
                                      f"and from FP32 by {bad[0]['onnxruntime_vs_fp32']} (fake quant: "
                                      f"{bad[0]['fake_quant_vs_fp32']})")
            for f in results[name].files:
                (tmp / f).unlink(missing_ok=True)
            written = []
            for f in result.files:
                os.replace(stage / f, tmp / f)
                written.append(f)
            results[name].files = written
            results[name].exporter = "torchscript"
            results[name].fallback_reason = None
            log(f"  {name}: {options.precision} {len(plan.quantized)}/{len(graph.candidates)} {options.level} layers, "
                f"error vs fp32 {format_error(plan.error.rel_rms)} (torch) / {format_error(acc_fp32.stats().rel_rms)} (onnxruntime)")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"graphs": entries, "calibration": recorded.provenance()}


def fake_quant_parity(graph: QuantizedGraph, path: str | os.PathLike, seed: int = 1) -> list[dict]:
    """ONNX Runtime on the exported graph against the fake-quantized PyTorch model it was exported from,
    at :data:`latentfuse.export.graphs.DEFAULT_SHAPES` (batch, aspect ratios and prompt lengths other than the
    export example): the Q/DQ graph is the calibrated model at every shape, not just the traced one."""
    import torch

    from latentfuse.export.graphs import DEFAULT_SHAPES

    spec = graph.spec
    session = ort_session(path)
    rows = []
    for shape in DEFAULT_SHAPES:
        inputs = spec.sample_inputs(shape.batch, shape.height, shape.width, shape.text_length, seed=seed)
        with torch.no_grad():
            ref = graph.model(*inputs.values()).float().numpy()
            fp32 = graph.fp32(*inputs.values()).float().numpy()
        out = np.asarray(session.run([spec.output_names[0]], {k: v.numpy() for k, v in inputs.items()})[0])
        if out.shape != ref.shape:
            raise LatentfuseError(f"graph {spec.name!r}: ONNX Runtime output {out.shape} != PyTorch {ref.shape} at "
                                  f"{shape.describe()}")
        stats, ort_fp32, fq_fp32 = ErrorSum(), ErrorSum(), ErrorSum()
        stats.add(out, ref)
        ort_fp32.add(out, fp32)
        fq_fp32.add(ref, fp32)
        stats, ort_fp32, fq_fp32 = stats.stats(), ort_fp32.stats(), fq_fp32.stats()
        passed = stats.rel_rms <= FAKE_QUANT_PARITY or ort_fp32.rel_rms <= FAKE_QUANT_PEER * fq_fp32.rel_rms
        rows.append({"shape": shape.label, "dims": shape.describe(), "rel_rms": json_number(stats.rel_rms),
                     "max_abs": json_number(stats.max_abs), "onnxruntime_vs_fp32": json_number(ort_fp32.rel_rms),
                     "fake_quant_vs_fp32": json_number(fq_fp32.rel_rms), "passed": bool(passed)})
    return rows


def _keep_cpu_dequantized_fp32(graph: QuantizedGraph, plan: LayerPlan, result, stage: Path, opset: int, log):
    """``--quant-target onnxruntime``: the layers ONNX Runtime's CPU provider would run dequantized
    (:func:`ort_kernel_report` of the export) stay FP32; the graph is measured and exported again, until
    none is left (a convolution runs as QLinearConv only while the next one quantizes its output)."""
    slow_all = []
    for _ in range(len(plan.quantized) + 1):
        kernels = ort_kernel_report(result.path, plan.quantized)
        slow = sorted(set(kernels["dequantized_layers"]) & set(plan.quantized))
        if not slow:
            break
        for name in slow:
            plan.quantized.remove(name)
            plan.excluded[name] = (f"ONNX Runtime's CPU provider runs it in FP32 behind a DequantizeLinear "
                                   f"({kernels['dequantized_layers'][name]}): its Q/DQ would only cost time "
                                   f"(--quant-target onnxruntime)")
        slow_all += slow
        graph.enable(plan.quantized)
        if not plan.quantized:
            break
        result = export_quantized(graph, stage, opset)
    if slow_all:
        plan.error = graph.error()
        plan.steps.append({"quantized": len(plan.quantized), "excluded_for_target": sorted(slow_all),
                           "rel_rms": json_number(plan.error.rel_rms)})
        log(f"  {graph.spec.name}: {len(slow_all)} layers ONNX Runtime runs dequantized stay FP32 "
            f"(--quant-target onnxruntime)")
    return result


def _fake_outputs(graph: QuantizedGraph) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [graph.model(*args).float().numpy() for args in graph.batches]


def _entry(graph: QuantizedGraph, plan: LayerPlan, options: QuantOptions, ort_fp32: ErrorStats | None,
           ort_fake: ErrorStats | None, kernels: dict | None, in_graph: dict | None) -> dict:
    scheme = ("int8: weights per output channel, activations per tensor, symmetric" if options.precision == "int8"
              else "fp8 e4m3: weights and activations per tensor")
    entry = {
        "precision": options.precision,
        "policy": "quantized",
        "scheme": f"{scheme}; max calibration (ModelOpt mtq.quantize); explicit QuantizeLinear/DequantizeLinear",
        "level": options.level,
        "target": options.target,
        "modelopt": modelopt_version(),
        "candidates": len(graph.candidates),
        "quantized_layers": list(plan.quantized),
        "excluded_layers": dict(plan.excluded),
        "roles": dict(plan.roles),
        "sensitivity": dict(plan.sensitivity),
        "exclusion_steps": list(plan.steps),
        "tolerance": {"layer": options.layer_tolerance, "graph": options.graph_tolerance,
                      "metric": "relative RMS error of the graph output against FP32 on the calibration inputs"},
        "error": {"fake_quant_vs_fp32": plan.error.to_dict() if plan.error else None},
        "calibration_rows": int(sum(int(b[0].shape[0]) for b in graph.batches)),
    }
    if ort_fp32 is not None:
        entry["error"]["onnxruntime_vs_fp32"] = ort_fp32.to_dict()
        entry["error"]["onnxruntime_vs_fake_quant"] = ort_fake.to_dict()
    if kernels is not None:
        entry["onnxruntime_cpu"] = kernels
    if in_graph is not None:
        missing = sorted(set(plan.quantized) - set(in_graph))
        extra = sorted(set(in_graph) - set(plan.quantized))
        if missing or extra:
            raise LatentfuseError(f"graph {graph.spec.name!r}: the exported Q/DQ nodes do not match the plan "
                                  f"(missing {missing[:4]}, unexpected {extra[:4]})")
    return entry
