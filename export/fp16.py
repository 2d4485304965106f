"""The bundle writer's FP16 step: one exported FP32 graph file -> its mixed-precision FP16 file in the bundle.

The conversion and its error measurement are calibration's (:mod:`latentfuse.calibration.fp16`, following the
plan that :mod:`latentfuse.calibration.plan` decides and reads); here the converted graph is written the
bundle's way: weights in ``<name>.data``, both files renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from latentfuse.calibration.fp16 import compare, convert_model, count_casts, float_weight_bytes
from latentfuse.calibration.ranges import load_model


def save_model(model, out_path: str | os.PathLike, *, external_data: bool = True) -> list[Path]:
    """Write ``model`` to ``out_path`` atomically; weights (tensors > 1 kB) go to ``<name>.data``
    (the bundle's convention, :mod:`latentfuse.export.onnx`: any size stays under protobuf's 2 GB limit).

    Returns the files written (the graph first). Like ``onnx.save``, this moves ``model``'s weights
    to external references. Both files are written into a temporary sibling
    directory and renamed into place, data file first, so a reader never sees a half-written pair.
    """
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_name = out_path.name + ".data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        if external_data:
            onnx.save(model, str(tmp / out_path.name), save_as_external_data=True,
                      all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        else:
            onnx.save(model, str(tmp / out_path.name))
        written = []
        if (tmp / data_name).exists():
            os.replace(tmp / data_name, out_path.parent / data_name)
            written.append(out_path.parent / data_name)
        os.replace(tmp / out_path.name, out_path)
        return [out_path] + written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_bundle_graph(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    plan_for_graph: Mapping,
    *,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    keep_io_types: bool | Sequence[str] = True,
) -> dict:
    """Convert the FP32 graph at ``fp32_path`` to ``out_path`` following ``plan_for_graph``.

    External data of the input is resolved next to ``fp32_path``; the output's weights go to
    ``<out_path>.data``. With ``feeds`` the converted graph is run against the FP32 one
    on CPU and the error is reported. Returns ``{"policy", "nodes", "fp32_nodes", "casts", "files",
    "weight_bytes": {"fp32", "fp16"}, "error": {...} | None}``.
    """
    import onnx


    fp32 = load_model(fp32_path)
    converted = convert_model(fp32, plan_for_graph, keep_io_types=keep_io_types)
    stats = {
        "policy": plan_for_graph.get("policy", "mixed"),
        "nodes": len(converted.graph.node),
        "fp32_nodes": len(plan_for_graph.get("fp32_nodes", [])),
        "casts": count_casts(converted) - count_casts(fp32),
        "weight_bytes": float_weight_bytes(converted),
        "error": compare(fp32, converted, feeds) if feeds else None,
    }
    del fp32
    # The exporter's value_info still types the converted tensors float32, which onnx.checker's full
    # check (strict type inference) rejects in the bundle: drop it and re-infer from the FP16 graph.
    del converted.graph.value_info[:]
    if converted.ByteSize() < 1_800_000_000:
        converted = onnx.shape_inference.infer_shapes(converted)
    stats["files"] = [str(f) for f in save_model(converted, out_path)]  # (moves the weights out of ``converted``)
    return stats
