"""Entropy (EN) of the fused image and cross entropy (CE) between the sources and the fused image.

References: EN, J. van Aardt, "Assessment of image fusion procedures using entropy, image quality, and
multispectral classification", J. Appl. Remote Sens. 2(1), 2008; CE, D. M. Bulanon, T. F. Burks,
V. Alchanatis, "Image fusion of visible and thermal images for fruit detection", Biosystems
Engineering 103(1), 2009. Code followed: VIFB ``metrics/metricsEntropy.m`` and
``metrics/metricsCross_entropy.m``.

Both use 256-bin gray-level histograms and log2 (bits). EN = -Σ p log2 p of the fused image;
CE = mean over the two sources of Σ p_X log2(p_X / p_F), summed over the levels present in both.

Conventions: ``vifb`` bins ``floor(value)`` as VIFB does; ``corrected`` bins the value rounded to the
nearest level (the same for 8-bit data; fairer for float fused images). CE's skipping of levels absent
from the fused image (where the divergence is infinite) is kept in both, so CE stays finite.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, fused_channels, gray, per_channel, prepare
from latentfuse.model.metrics._matlab import mround


def _levels(x: np.ndarray, convention: str) -> np.ndarray:
    q = np.floor(x) if convention == "vifb" else mround(x)
    return np.clip(q, 0, 255).astype(np.int64)


def histogram(x: np.ndarray, convention: str = "corrected") -> np.ndarray:
    """256-bin gray-level probability histogram of a [0, 255] image."""
    counts = np.bincount(_levels(x, convention).ravel(), minlength=256).astype(np.float64)
    return counts / counts.sum()


def _entropy_bits(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-np.sum(nz * np.log2(nz)))


def en(a, b, f, convention: str = "corrected") -> float:
    """Shannon entropy (bits) of fused ``f``; RGB: per-channel mean. ``a``, ``b`` are only validated."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    return float(np.mean([_entropy_bits(histogram(c, convention)) for c in fused_channels(f)]))


def _cross_entropy(x: np.ndarray, z: np.ndarray, convention: str) -> float:
    p, q = histogram(x, convention), histogram(z, convention)
    both = (p > 0) & (q > 0)
    return float(np.sum(p[both] * np.log2(p[both] / q[both])))


def ce(a, b, f, convention: str = "corrected") -> float:
    """Cross entropy (bits) of the sources relative to fused ``f``, averaged over the two; lower is better."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        x, y = gray(x, uint8=True), gray(y, uint8=True)
        return (_cross_entropy(x, z, convention) + _cross_entropy(y, z, convention)) / 2.0

    return per_channel(one, a, b, f)
