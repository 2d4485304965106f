"""Calibrate a deployment bundle: measure every FP32 graph on the calibration set, write the precision plan.

The walk: :mod:`latentfuse.calibration.dataset` (degraded pairs + prompts) -> :mod:`latentfuse.calibration.feeds` (graph inputs
through the bundle's own FP32 graphs) -> :mod:`latentfuse.calibration.plan` (ranges, FP16 error, FP32 islands) ->
a check of the whole converted graph (:func:`latentfuse.calibration.fp16.compare`). That last step is the safety net of
the node rules, a measured escalation: when the mixed-precision output differs from FP32 by more than
``graph_tolerance`` (relative to its output's magnitude) or turns non-finite, every normalisation /
softmax node is moved to FP32 together with the nodes that feed it and the graph measured again
(:data:`RUNGS`); if that still fails, the graph is kept
entirely in FP32 (policy ``fp32``, the measured errors recorded as the reason) - the measured version of
what public pipelines do by hand for VAE decoders.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from latentfuse.calibration.plan import Thresholds, decide, make_plan, measure_graph
from latentfuse.model.errors import LatentfuseError

DEFAULT_GRAPH_TOLERANCE = 2e-2  # ~2.5 grey levels of 255 on a decoded image; 40x FP16's unit roundoff
RUNGS = ("measured", "statistics_fp32")  # calibration.plan.decide(escalate=False / True)


def fp32_graph_file(bundle: Path, name: str, entry: dict) -> Path:
    """The FP32 ONNX file of a graph (``fp32_file`` when the bundle also holds an FP16 one)."""
    import onnx

    if entry.get("precision", "fp32") != "fp32":
        raise LatentfuseError(f"{bundle}: graph {name!r} is {entry['precision']}; calibration measures an fp32 "
                              f"bundle (latentfuse export --precision fp32)")
    rel = entry.get("file")
    if not rel:
        raise LatentfuseError(f"{bundle}/manifest.json: graph {name!r} has no 'file'")
    path = bundle / rel
    if not path.is_file():
        raise LatentfuseError(f"{bundle}: graph file {rel} of {name!r} is missing")
    model = onnx.load(str(path), load_external_data=False)
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise LatentfuseError(f"{path} already holds FP16 weights: calibration measures the FP32 graphs")
    return path


def calibrate_bundle(bundle: str | Path, *, samples: int = 12, seed: int = 0, thresholds: Thresholds | None = None,
                     graphs: Sequence[str] | None = None, fp32_graphs: Sequence[str] = (),
                     graph_tolerance: float = DEFAULT_GRAPH_TOLERANCE, long_sides: Sequence[int] | None = None,
                     chunk_size: int = 256, progress: bool = True) -> dict:
    """The precision plan of ``bundle`` (see :mod:`latentfuse.calibration.plan` for the format)."""
    from tqdm.auto import tqdm

    from latentfuse.calibration.dataset import calibration_prompts, calibration_samples, describe
    from latentfuse.calibration.feeds import build_feeds
    from latentfuse.calibration.fp16 import compare, convert_model
    from latentfuse.calibration.ranges import load_model
    from latentfuse.runtime.manifest import load_manifest

    bundle = Path(bundle)
    thresholds = thresholds or Thresholds()
    manifest = load_manifest(bundle)
    names = list(manifest["graphs"])
    unknown = sorted(set(graphs or []) - set(names)) + sorted(set(fp32_graphs) - set(names))
    if unknown:
        raise LatentfuseError(f"no graph {unknown[0]!r} in {bundle}/manifest.json (graphs: {', '.join(names)})")
    files = {n: fp32_graph_file(bundle, n, manifest["graphs"][n]) for n in names}

    set_ = calibration_samples(samples, seed=seed, **({"long_sides": long_sides} if long_sides else {}))
    prompts = calibration_prompts(set_)
    feeds = build_feeds(bundle, manifest, set_, prompts, files, seed=seed)

    plans = {}
    for name in tqdm([n for n in names if not graphs or n in graphs], desc="calibrating graphs", disable=not progress):
        if name in fp32_graphs:
            plans[name] = {"policy": "fp32", "policy_reason": "kept in FP32 on request (--fp32-graph)", "fp32_nodes": []}
            continue
        model = load_model(files[name])
        measured = measure_graph(model, feeds[name], chunk_size=chunk_size, progress=name if progress else False)
        attempts = []
        for level, rung in enumerate(RUNGS):
            entry = decide(model, measured, thresholds, escalate=bool(level))
            error = compare(model, convert_model(model, entry), feeds[name])
            attempts.append({"rung": rung, "fp32_nodes": entry["num_fp32_nodes"], "rel": _num(error["rel"]),
                             "max_abs": error["max_abs"], "nonfinite": error["nonfinite"]})
            if not error["nonfinite"] and error["rel"] <= graph_tolerance:
                break
        entry["fp16_error"] = {**attempts[-1], "backend": error["backend"]}
        entry["escalation"] = attempts
        if error["nonfinite"] or not error["rel"] <= graph_tolerance:
            entry["policy"] = "fp32"
            entry["policy_reason"] = (f"mixed-precision output error {_num(error['rel'])} (relative) with "
                                      f"{error['nonfinite']} non-finite values exceeds the graph tolerance "
                                      f"{graph_tolerance} even with every normalisation/softmax node in FP32")
        plans[name] = entry
    calibration_set = describe(set_, prompts)
    calibration_set["seed"] = seed
    plan = make_plan(plans, thresholds, calibration_set)
    plan["graph_tolerance"] = graph_tolerance
    return plan


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
