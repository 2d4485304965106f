"""Q^AB/F, the gradient-based edge-preservation metric of Xydeas and Petrović.

Reference: C. S. Xydeas and V. Petrović, "Objective image fusion performance measure", Electronics
Letters 36(4), 2000; code followed: VIFB ``metrics/metricsQabf.m`` (Zhang et al., CVPRW 2020), whose
per-pixel loops are vectorised here.

Per source X: Sobel responses sx, sy give strength g = sqrt(sx² + sy²) and orientation
α = atan(sy / sx) (π/2 where sx = 0). Relative strength G = min(gX, gF) / max(gX, gF), relative
orientation A = 1 - |αX - αF| / (π/2), preservation Q = Qg(G) · Qa(A) with the sigmoids
Qg = Tg / (1 + exp(kg (G - Dg))), Qa = Ta / (1 + exp(ka (A - Da))), and
Q^AB/F = Σ (Q^AF gA + Q^BF gB) / Σ (gA + gB).

Conventions:

- ``vifb``: VIFB's quirks kept: where gX == gF it sets G = gF (not 1), and it multiplies the 8-bit
  values by 255 before the Sobel filters (``255*im2double`` of an array that is already double), so
  that G = gF is a large number there (Qg ≈ Tg) except where both gradients are 0 (G = 0).
- ``corrected``: G = 1 where the strengths are equal (the ratio's limit), no rescaling.

Returns NaN when neither source has any gradient (the denominator is 0).
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare
from latentfuse.model.metrics._matlab import conv2_same

# Model parameters of the reference code (L = 1).
TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8

_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])  # h1
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # h3


def _strength_orientation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = conv2_same(x, _SOBEL_X)
    sy = conv2_same(x, _SOBEL_Y)
    g = np.sqrt(sx * sx + sy * sy)
    vertical = sx == 0
    sx[vertical] = 1.0
    alpha = np.arctan(np.divide(sy, sx, out=sy))
    alpha[vertical] = np.pi / 2
    return g, alpha


def _preservation(gx, ax, gf, af, convention: str) -> np.ndarray:
    """Q^XF map: strength sigmoid times orientation sigmoid (vectorised reference loops)."""
    ratio = np.divide(np.minimum(gx, gf), np.maximum(gx, gf), out=np.zeros_like(gx), where=gx != gf)
    equal = gx == gf
    ratio[equal] = gf[equal] if convention == "vifb" else 1.0
    orient = np.abs(ax - af)
    orient *= -1.0 / (np.pi / 2)
    orient += 1.0
    # Qg · Qa = Tg Ta / ((1 + exp(kg (G - Dg))) (1 + exp(ka (A - Da))))
    ratio -= DG
    ratio *= KG
    qg = np.exp(ratio, out=ratio)
    qg += 1.0
    orient -= DA
    orient *= KA
    qa = np.exp(orient, out=orient)
    qa += 1.0
    qg *= qa
    return np.divide(TG * TA, qg, out=qg)


def _qabf_gray(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str) -> float:
    scale = 255.0 if convention == "vifb" else 1.0
    ga, aa = _strength_orientation(scale * gray(a))
    gb, ab = _strength_orientation(scale * gray(b))
    gf, af = _strength_orientation(scale * gray(f))
    qaf = _preservation(ga, aa, gf, af, convention)
    qbf = _preservation(gb, ab, gf, af, convention)
    den = float(np.sum(ga + gb))
    if den == 0.0:
        return float("nan")
    return float(np.sum(qaf * ga + qbf * gb) / den)


def qabf(a, b, f, convention: str = "corrected") -> float:
    """Q^AB/F of fused ``f`` from sources ``a``, ``b`` ([0, 255], HxW or HxWx3); 1 is perfect (≈0.975 max)."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    return per_channel(lambda x, y, z: _qabf_gray(x, y, z, convention), a, b, f)
