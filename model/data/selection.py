"""Task-aware selection of the most reliable pseudo-label among teacher candidates (FusionFM).

FusionFM scores the fusion results of several teachers with a task-aware function and keeps the best
per sample; the abstract leaves the function open, so ours is a weighted sum of fusion criteria chosen
per task (:data:`TASK_WEIGHTS`), each computed on luminance:

* VIF -- Q^AB/F (edge transfer), VIF (information fidelity) and MI (from :mod:`latentfuse.model.metrics`);
* MEF -- exposure quality (mean Mertens well-exposedness, exp(-(Y-0.5)²/2·0.2²)), a MEF-SSIM-like
  structure score and Q^AB/F;
* MFF -- sharpness (average gradient, AG), Q^AB/F and the structure score.

The structure score is the mean over pixels of max(SSIM_map(F, A), SSIM_map(F, B)): like MEF-SSIM
(Ma et al., TIP 2015) it rewards keeping, at every location, the structure of the best source.

Criteria live on different scales, so each is divided by its best value among the candidates of the
sample (``value / max``): a candidate's score is in (0, 1] and equals 1 only if it is best on every
criterion. Ties keep the earlier candidate. A criterion that cannot be measured (VIF needs at least
81x81 pixels) is left out and the remaining weights renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentfuse.model.data.tasks import check_task
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import luma

TASK_WEIGHTS: dict[str, dict[str, float]] = {
    "vif": {"qabf": 0.4, "vif": 0.35, "mi": 0.25},
    "mef": {"exposure": 0.3, "structure": 0.4, "qabf": 0.3},
    "mff": {"sharpness": 0.3, "qabf": 0.4, "structure": 0.3},
}

WELL_EXPOSED_SIGMA = 0.2


def exposure_quality(fused: np.ndarray) -> float:
    """Mean well-exposedness of the fused luminance (Mertens et al. 2007 weight), in (0, 1]."""
    y = luma(fused)
    return float(np.mean(np.exp(-((y - 0.5) ** 2) / (2 * WELL_EXPOSED_SIGMA**2))))


def structure_score(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Mean of the pixel-wise max of SSIM maps against either source (MEF-SSIM-like), in [-1, 1]."""
    from skimage.metrics import structural_similarity

    ya, yb, yf = luma(a), luma(b), luma(fused)
    win = min(7, *(s if s % 2 else s - 1 for s in yf.shape))
    _, map_a = structural_similarity(yf, ya, data_range=1.0, full=True, win_size=win)
    _, map_b = structural_similarity(yf, yb, data_range=1.0, full=True, win_size=win)
    return float(np.mean(np.maximum(map_a, map_b)))


def criteria(a: np.ndarray, b: np.ndarray, fused: np.ndarray, task: str) -> dict[str, float]:
    """The raw criterion values of :data:`TASK_WEIGHTS` for one candidate (images in [0, 1])."""
    import latentfuse.model.metrics as M

    task = check_task(task)
    ya, yb, yf = (luma(x) * 255.0 for x in (a, b, fused))
    out: dict[str, float] = {}
    for name in TASK_WEIGHTS[task]:
        if name == "exposure":
            out[name] = exposure_quality(fused)
        elif name == "structure":
            out[name] = structure_score(a, b, fused)
        elif name == "sharpness":
            out[name] = float(M.ag(ya, yb, yf))
        else:
            try:
                out[name] = float(M.compute(ya, yb, yf, names=[name])[name])
            except LatentfuseError:
                out[name] = float("nan")  # e.g. VIF's 4-scale pyramid needs >= 81 px: criterion skipped
    return out


@dataclass
class Selection:
    """The chosen candidate, every candidate's score and raw criteria."""

    name: str
    image: np.ndarray
    scores: dict[str, float]
    criteria: dict[str, dict[str, float]]


def score_candidates(raw: dict[str, dict[str, float]], task: str) -> dict[str, float]:
    """Weighted sum of criteria normalised by the best candidate's value (see module docstring)."""
    weights = TASK_WEIGHTS[check_task(task)]
    # A criterion that no candidate could be measured on (image too small) drops out of the weighting.
    weights = {c: w for c, w in weights.items() if any(np.isfinite(raw[n][c]) for n in raw)}
    total = sum(weights.values()) or 1.0
    scores = {name: 0.0 for name in raw}
    for crit, w in weights.items():
        values = np.array([raw[name][crit] for name in raw], dtype=np.float64)
        values = np.where(np.isfinite(values), values, 0.0)
        best = values.max()
        normed = values / best if best > 0 else np.zeros_like(values)
        for name, v in zip(raw, np.clip(normed, 0.0, 1.0)):
            scores[name] += w * float(v) / total
    return scores


def select_label(a: np.ndarray, b: np.ndarray, candidates: dict[str, np.ndarray], task: str) -> Selection:
    """Score every candidate against the sources and keep the best (FusionFM selection function)."""
    if not candidates:
        raise LatentfuseError("no teacher candidates to select from")
    for name, img in candidates.items():
        if img.shape[:2] != a.shape[:2]:
            raise LatentfuseError(f"candidate {name!r} is {img.shape[:2]}, sources are {a.shape[:2]}")
    raw = {name: criteria(a, b, img, task) for name, img in candidates.items()}
    scores = score_candidates(raw, task)
    best = max(scores, key=lambda n: scores[n])  # first maximum wins ties
    return Selection(name=best, image=candidates[best], scores=scores, criteria=raw)
