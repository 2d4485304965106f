"""How far a quantized bundle is from FP32: each graph on its calibration inputs, fused images on held-out pairs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentfuse.export.quantize.options import ACCURACY_SLACK, DEFAULT_GRAPH_TOLERANCE
from latentfuse.export.quantize.ort_report import ort_outputs, ort_session
from latentfuse.export.quantize.stats import ErrorSum, torch_feeds
from latentfuse.runtime.manifest import QUANTIZED_PRECISIONS


@dataclass
class AccuracyRow:
    graph: str
    precision: str
    rows: int
    rel_rms: float
    max_abs: float
    recorded: float | None
    bound: float
    passed: bool
    source: str


def graph_accuracy(bundle_dir: str | os.PathLike, components, *, manifest: dict | None = None,
                   samples: int | None = None, progress: bool = True) -> tuple[list[AccuracyRow], str]:
    """Per quantized graph of a bundle: ONNX Runtime output against the FP32 PyTorch graph on
    calibration inputs re-recorded as the manifest's ``quantization.calibration`` describes them (the
    shipped sample pairs when its folders are gone). Returns the rows and where the inputs came from."""
    from latentfuse.calibration.quant_inputs import PairSource, calibration_inputs
    from latentfuse.runtime.manifest import load_manifest
    from latentfuse.export.graphs import graph_specs

    root = Path(bundle_dir)
    manifest = manifest or load_manifest(root, verify_hashes=False)
    quantized = {n: e for n, e in manifest["graphs"].items() if e.get("precision") in QUANTIZED_PRECISIONS}
    if not quantized:
        return [], ""
    section = manifest.get("quantization") or {}
    prov = section.get("calibration") or {}
    sources, note = [], ""
    for text in prov.get("sources", []):
        task, _, path = str(text).partition("=")
        if path and Path(path).is_dir():
            sources.append(PairSource(task, Path(path)))
        elif path:
            note = f"{path} is gone: the shipped sample pairs instead"
            sources = []
            break
    n = int(samples or prov.get("samples") or 6)
    heads = [e["head"] for e in manifest["graphs"].values() if e.get("kind") == "dit"]
    recorded = calibration_inputs(components, heads, sources=sources or None, samples=n,
                                  seed=int(prov.get("seed", 0)), progress=progress)
    where = ", ".join(recorded.sources) + f"; {n} crops, seed {prov.get('seed', 0)}" + (f" ({note})" if note else "")
    specs = graph_specs(components, heads)
    rows = []
    for name, entry in quantized.items():
        spec = specs[name]
        module = spec.module(components).eval()
        batches = torch_feeds(spec, recorded.feeds.get(name) or [])
        import torch

        with torch.no_grad():
            refs = [module(*a).float().numpy() for a in batches]
        outs = ort_outputs(ort_session(root / entry["file"]), spec, batches)
        acc = ErrorSum()
        for y, r in zip(outs, refs):
            acc.add(y, r)
        stats = acc.stats()
        q = entry.get("quantization") or {}
        tol = float((q.get("tolerance") or {}).get("graph", DEFAULT_GRAPH_TOLERANCE))
        recorded_err = ((q.get("error") or {}).get("onnxruntime_vs_fp32") or {}).get("rel_rms")
        bound = ACCURACY_SLACK * tol
        rows.append(AccuracyRow(name, entry["precision"], int(sum(b[0].shape[0] for b in batches)), stats.rel_rms,
                                stats.max_abs, recorded_err if isinstance(recorded_err, (int, float)) else None,
                                bound, bool(stats.rel_rms <= bound and not stats.nonfinite), where))
    return rows, where


@dataclass
class FusionRow:
    task: str
    head: str
    pairs: int
    psnr_db: float            # mean over pairs of the fused-image PSNR, quantized bundle vs FP32
    psnr_min_db: float
    qabf_fp32: float
    qabf_quant: float

    @property
    def qabf_change(self) -> float:
        return self.qabf_quant - self.qabf_fp32


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def fusion_accuracy(reference, candidate, pairs: Sequence, heads: Sequence[str], *, seed: int = 0,
                    progress: bool = True) -> list[FusionRow]:
    """Per task and head: fused-image PSNR of ``candidate`` against ``reference`` (two
    :class:`latentfuse.runtime.pipeline.Pipeline`, e.g. the FP32 and INT8 bundles) and both Q^AB/F, over
    ``pairs`` (:class:`latentfuse.calibration.quant_inputs.CalibrationCrop`: task, a, b, prompt)."""
    from tqdm.auto import tqdm

    from latentfuse.model.metrics import qabf

    scores: dict[tuple[str, str], list] = {}
    jobs = [(p, h) for p in pairs for h in heads]
    for pair, head in tqdm(jobs, desc="fused images", unit="fuse", disable=not progress, leave=False):
        ref = reference(pair.a, pair.b, task=pair.task, prompt=pair.prompt, mode=head, seed=seed).image
        out = candidate(pair.a, pair.b, task=pair.task, prompt=pair.prompt, mode=head, seed=seed).image
        a, b = (np.asarray(x, np.float64) * 255.0 for x in (pair.a, pair.b))
        if a.ndim != b.ndim:
            a = a if a.ndim == 2 else a.mean(-1)
            b = b if b.ndim == 2 else b.mean(-1)
        f_ref, f_out = (np.asarray(x, np.float64) * 255.0 for x in (ref, out))
        if a.ndim == 2 and f_ref.ndim == 3:
            f_ref, f_out = f_ref.mean(-1), f_out.mean(-1)
        elif a.ndim == 3 and f_ref.ndim == 2:
            a, b = a.mean(-1), b.mean(-1)
        scores.setdefault((pair.task, head), []).append((_psnr(ref, out), qabf(a, b, f_ref), qabf(a, b, f_out)))
    rows = []
    for (task, head), vals in scores.items():
        v = np.asarray(vals, np.float64)
        finite = v[:, 0][np.isfinite(v[:, 0])]
        rows.append(FusionRow(task, head, len(vals), float(finite.mean()) if finite.size else math.inf,
                              float(finite.min()) if finite.size else math.inf, float(v[:, 1].mean()),
                              float(v[:, 2].mean())))
    return rows


def format_accuracy(rows: Sequence[AccuracyRow], fusion: Sequence[FusionRow] = ()) -> str:
    lines = []
    if rows:
        lines.append(f"{'graph':<16}{'precision':<10}{'rows':>6}{'rel_rms':>10}{'max_abs':>10}{'at export':>11}"
                     f"{'bound':>9}  ok   (ONNX Runtime vs FP32 PyTorch on calibration inputs)")
        for r in rows:
            rec = f"{r.recorded:.3g}" if r.recorded is not None else "-"
            lines.append(f"{r.graph:<16}{r.precision:<10}{r.rows:>6}{r.rel_rms:>10.3g}{r.max_abs:>10.3g}{rec:>11}"
                         f"{r.bound:>9.3g}  {'pass' if r.passed else 'FAIL'}")
        lines.append(f"calibration inputs: {rows[0].source}")
    if fusion:
        lines.append(f"{'task':<6}{'head':<12}{'pairs':>6}{'PSNR dB':>9}{'min dB':>8}{'QAB/F fp32':>12}"
                     f"{'quant':>8}{'change':>9}   (fused images, quantized vs FP32, held-out pairs)")
        for f in fusion:
            lines.append(f"{f.task:<6}{f.head:<12}{f.pairs:>6}{f.psnr_db:>9.2f}{f.psnr_min_db:>8.2f}"
                         f"{f.qabf_fp32:>12.4f}{f.qabf_quant:>8.4f}{f.qabf_change:>+9.4f}")
    return "\n".join(lines)
