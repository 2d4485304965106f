"""Calibration feeds as torch tensors, and the relative RMS error of a graph output against FP32."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from latentfuse.export.quantize.options import BATCH_ROWS
from latentfuse.model.errors import LatentfuseError


def torch_feeds(spec, feeds: Sequence[Mapping[str, np.ndarray]], max_rows: int = BATCH_ROWS) -> list[tuple]:
    """Recorded numpy feeds -> tuples of tensors in the spec's input order, stacked into batches."""
    import torch

    from latentfuse.calibration.quant_inputs import stack_feeds

    names = spec.input_names
    out = []
    for feed in stack_feeds(feeds, max_rows):
        missing = [n for n in names if n not in feed]
        if missing:
            raise LatentfuseError(f"calibration feed of {spec.name!r} lacks inputs {missing}")
        out.append(tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
    return out


@dataclass
class ErrorStats:
    """Output error against a reference over a set of feeds: relative RMS (||y - r|| / ||r||) and max |y - r|."""

    rel_rms: float
    max_abs: float
    ref_rms: float = 0.0
    nonfinite: int = 0

    def to_dict(self) -> dict:
        return {"rel_rms": json_number(self.rel_rms), "max_abs": json_number(self.max_abs), "ref_rms": json_number(self.ref_rms),
                "nonfinite": int(self.nonfinite)}


def json_number(x: float) -> float | str:
    return float(f"{x:.4g}") if math.isfinite(x) else "inf"


class ErrorSum:
    def __init__(self):
        self.sq = self.ref_sq = self.max_abs = 0.0
        self.n = self.nonfinite = 0

    def add(self, y: np.ndarray, r: np.ndarray) -> None:
        y = np.asarray(y, np.float64)
        r = np.asarray(r, np.float64)
        bad = ~np.isfinite(y)
        self.nonfinite += int(bad.sum())
        d = np.where(bad, 0.0, y - r)
        self.sq += float((d * d).sum())
        self.ref_sq += float((r * r).sum())
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)
        self.n += r.size

    def stats(self) -> ErrorStats:
        rel = math.sqrt(self.sq / self.ref_sq) if self.ref_sq > 0 else (0.0 if self.sq == 0 else math.inf)
        if self.nonfinite:
            rel = math.inf
        return ErrorStats(rel, self.max_abs, math.sqrt(self.ref_sq / max(self.n, 1)), self.nonfinite)


def torch_error(module, batches: Sequence[tuple], references: Sequence) -> ErrorStats:
    import torch

    acc = ErrorSum()
    with torch.no_grad():
        for args, ref in zip(batches, references):
            acc.add(module(*args).float().numpy(), ref)
    return acc.stats()
