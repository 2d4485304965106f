"""Q_CV, the Chen–Varshney human-perception-inspired regional fusion metric (lower is better).

Reference: H. Chen, P. K. Varshney, "A human perception inspired quality metric for image fusion based
on regional information", Information Fusion 8(2), 2007; code followed: VIFB ``metrics/metricsQcv.m``
(Z. Liu's ``metricChen.m``).

Each image is min-max stretched to [0, 255] and rounded. Per 16x16 block W (``blkproc``: partial
blocks at the right/bottom are zero padded), the saliency of source X is λ_X(W) = Σ_W g_X^α (g: Sobel
magnitude, zero-padded ``filter2``). The differences X - F are filtered in the frequency domain by a
contrast sensitivity function on the ``freqspace`` grid scaled by (N/8, M/8), and
D_X(W) = Σ_W (filtered)² / 256. Q_CV = Σ_W (λ_A D_A + λ_B D_B) / Σ_W (λ_A + λ_B).

Conventions:

- ``vifb``: α = 5 and the Mannos–Sakrison CSF only (as in the reference code); a constant image makes
  the stretch divide by zero (NaN), as in MATLAB.
- ``corrected``: α = 1 (the paper's saliency), a constant image stretches to 0. The CSF can be chosen
  (``csf="mannos_sakrison" | "daly" | "ahumada"``, the paper's three); the Daly filter's double
  exponent in the reference code (an unused branch there) is fixed.

Returns NaN when neither source has any gradient.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare
from latentfuse.model.metrics._matlab import blocks, filter2_same, freq_filter, freqspace, mround

WINDOW = 16
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T
CSFS = ("mannos_sakrison", "daly", "ahumada")


def normalize1(x: np.ndarray, convention: str) -> np.ndarray:
    """Z. Liu's ``normalize1``: min-max stretch to [0, 255], rounded."""
    hi, lo = x.max(), x.min()
    if hi == 0 and lo == 0:
        return x
    if hi == lo and convention != "vifb":
        return np.zeros_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mround((x - lo) / (hi - lo) * 255.0)


def csf_response(shape: tuple[int, int], csf: str) -> np.ndarray:
    """CSF on the centred ``freqspace`` grid of ``metricChen.m`` (frequencies scaled by N/8, M/8)."""
    m, n = shape
    u, v = freqspace(shape)
    r = np.sqrt((u * n / 8.0) ** 2 + (v * m / 8.0) ** 2)
    if csf == "mannos_sakrison":
        return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    if csf == "daly":
        zero = r == 0
        rr = np.where(zero, 1.0, r)
        resp = (0.008 / rr**3 + 1.0) ** (-0.2) * 1.42 * rr * np.exp(-0.3 * rr * np.sqrt(1 + 0.06 * np.exp(0.3 * rr)))
        return np.where(zero, 0.0, resp)
    if csf == "ahumada":
        return 1.0 * np.exp(-((r / 97.3227) ** 2)) - 0.685 * np.exp(-((r / 12.1653) ** 2))
    raise LatentfuseError(f"unknown Q_CV contrast sensitivity function {csf!r}; expected one of {CSFS}")


def _power(x: np.ndarray, alpha: float) -> np.ndarray:
    """x^alpha; integer exponents by repeated squaring (several times faster than a float pow)."""
    if alpha != int(alpha) or not 1 <= alpha <= 64:
        return x**alpha
    k, base, out = int(alpha), x, None
    while k:
        if k & 1:
            out = base if out is None else out * base
        k >>= 1
        if k:
            base = base * base
    return out


def _sobel_magnitude(x: np.ndarray) -> np.ndarray:
    gx = filter2_same(_SOBEL_X, x)
    gy = filter2_same(_SOBEL_Y, x)
    return np.sqrt(gx * gx + gy * gy)


def _qcv_gray(a, b, f, convention: str, alpha: float, csf: str) -> float:
    a, b, f = (normalize1(gray(x), convention) for x in (a, b, f))
    lam_a = blocks(_power(_sobel_magnitude(a), alpha), WINDOW).sum(axis=(2, 3))
    lam_b = blocks(_power(_sobel_magnitude(b), alpha), WINDOW).sum(axis=(2, 3))
    h = csf_response(f.shape, csf)
    d_a = (blocks(freq_filter(a - f, h), WINDOW) ** 2).mean(axis=(2, 3))
    d_b = (blocks(freq_filter(b - f, h), WINDOW) ** 2).mean(axis=(2, 3))
    den = float(np.sum(lam_a + lam_b))
    if den == 0.0 or not np.isfinite(den):
        return float("nan")
    return float(np.sum(lam_a * d_a + lam_b * d_b) / den)


def qcv(a, b, f, convention: str = "corrected", alpha: float | None = None, csf: str | None = None) -> float:
    """Q_CV of fused ``f`` ([0, 255], HxW or HxWx3); lower is better.

    ``alpha`` defaults to 5 (``vifb``) or 1 (``corrected``); ``csf`` to Mannos–Sakrison. Choosing
    anything but Mannos–Sakrison with ``vifb`` is rejected (the reference code has only that one).
    """
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    if alpha is None:
        alpha = 5.0 if convention == "vifb" else 1.0
    csf = csf or "mannos_sakrison"
    if convention == "vifb" and csf != "mannos_sakrison":
        raise LatentfuseError("the vifb convention of Q_CV uses the Mannos-Sakrison CSF only")
    if csf not in CSFS:
        raise LatentfuseError(f"unknown Q_CV contrast sensitivity function {csf!r}; expected one of {CSFS}")
    return per_channel(lambda x, y, z: _qcv_gray(x, y, z, convention, alpha, csf), a, b, f)
