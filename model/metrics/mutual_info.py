"""Mutual information (MI) between the fused image and the sources: MI(A, F) + MI(B, F).

Reference: G. Qu, D. Zhang, P. Yan, "Information measure for performance of image fusion",
Electronics Letters 38(7), 2002; code followed: VIFB ``metrics/metricsMutinf.m``.

MI(X, F) = H(X) + H(F) - H(X, F) from 256-bin (joint) gray-level histograms.

Conventions:

- ``vifb``: as VIFB: each image is first min-max stretched to [0, 255] and rounded (``int16``),
  entropies in nats (natural log).
- ``corrected``: the values are binned as they are (rounded to the nearest level, no stretching) and
  entropies are in bits, the unit of EN, so that fusing an image with itself gives MI = 2 EN.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare
from latentfuse.model.metrics._matlab import mround


def _levels(x: np.ndarray, convention: str) -> np.ndarray:
    if convention == "vifb":
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) * 255.0 if hi != lo else np.zeros_like(x)
    return np.clip(mround(x), 0, 255).astype(np.int64)


def _entropy(p: np.ndarray, log) -> float:
    nz = p[p > 0]
    return float(-np.sum(nz * log(nz)))


def mutual_information(x: np.ndarray, z: np.ndarray, convention: str = "corrected") -> float:
    """MI of two 2-D [0, 255] images (nats for ``vifb``, bits for ``corrected``)."""
    log = np.log if convention == "vifb" else np.log2
    ix, iz = _levels(x, convention).ravel(), _levels(z, convention).ravel()
    joint = np.bincount(ix * 256 + iz, minlength=256 * 256).astype(np.float64)
    joint /= joint.sum()
    joint = joint.reshape(256, 256)
    return _entropy(joint.sum(1), log) + _entropy(joint.sum(0), log) - _entropy(joint.ravel(), log)


def mi(a, b, f, convention: str = "corrected") -> float:
    """MI(A, F) + MI(B, F) of fused ``f`` ([0, 255], HxW or HxWx3)."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        x, y = gray(x, uint8=True), gray(y, uint8=True)
        return mutual_information(x, z, convention) + mutual_information(y, z, convention)

    return per_channel(one, a, b, f)
