"""Q_CB, the Chen–Blum perceptual (contrast-preservation) fusion metric.

Reference: Y. Chen, R. S. Blum, "A new automated quality assessment algorithm for image fusion", Image
and Vision Computing 27(10), 2009; code followed: VIFB ``metrics/metricsQcb.m`` (Z. Liu's
``metricChenBlum.m``).

Each image is min-max stretched to [0, 255] and rounded, filtered in the frequency domain by the DoG
contrast sensitivity function S(r) = exp(-(r/f0)²) - a exp(-(r/f1)²) (f0 = 15.3870, f1 = 1.3456,
a = 0.7622, ``freqspace`` grid scaled by (N/30, M/30)). Local contrast C = |G1*I / G2*I - 1| with
31x31 un-normalised Gaussians σ = 2 and 4 (zero-padded ``filter2``), masked as
C' = t C^p / (h C^q + Z) (t = h = 1, p = 3, q = 2, Z = 1e-4). Preservation Q_XF = min(C'_X, C'_F) /
max(C'_X, C'_F), saliency λ_X = C'_X² / (C'_A² + C'_B²), Q_CB = mean(λ_A Q_AF + λ_B Q_BF).

Conventions: ``vifb`` reproduces the reference arithmetic, 0/0 included (a constant image gives NaN);
``corrected`` defines the 0/0 cases (zero local mean: contrast 0; equal contrasts preserve fully:
Q = 1; no contrast in either source: equal weights) and stretches a constant image to 0.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare
from latentfuse.model.metrics._matlab import correlate_sep, freq_filter, freqspace
from latentfuse.model.metrics.chen_varshney import normalize1

F0, F1, A_DOG = 15.3870, 1.3456, 0.7622
K_T, H_T, Z_T = 1.0, 1.0, 1e-4  # masking C' = t C^3 / (h C^2 + Z): p = 3, q = 2
HALF = 15  # gaussian2d uses a fixed 31x31 support


def _gauss_factor(sigma: float) -> np.ndarray:
    # gaussian2d: exp(-(x²+y²)/(2σ²)) / (2πσ²), not normalised; split into two 1-D factors.
    x = np.arange(-HALF, HALF + 1, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _masked_contrast(x: np.ndarray, convention: str) -> np.ndarray:
    g1, g2 = _gauss_factor(2.0), _gauss_factor(4.0)
    fine, coarse = correlate_sep(x, g1, g1, "same"), correlate_sep(x, g2, g2, "same")
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(fine / coarse - 1.0)
        if convention != "vifb":
            c[coarse == 0] = 0.0  # a zero local mean (blank region): no contrast rather than 0/0
        c2 = c * c  # c^q with q = 2; c^p = c^3 below (products are ~10x faster than pow)
        return K_T * (c2 * c) / (H_T * c2 + Z_T)


def _qcb_gray(a: np.ndarray, b: np.ndarray, f: np.ndarray, convention: str) -> float:
    a, b, f = (normalize1(gray(x), convention) for x in (a, b, f))
    m, n = f.shape
    u, v = freqspace(f.shape)
    r = np.sqrt((u * n / 30.0) ** 2 + (v * m / 30.0) ** 2)
    s = np.exp(-((r / F0) ** 2)) - A_DOG * np.exp(-((r / F1) ** 2))
    ca, cb, cf = (_masked_contrast(freq_filter(x, s), convention) for x in (a, b, f))
    with np.errstate(divide="ignore", invalid="ignore"):
        if convention == "vifb":
            # MATLAB's masked sum, so that inf * 0 gives NaN exactly where the reference does.
            mask_a, mask_b = (ca < cf).astype(np.float64), (cb < cf).astype(np.float64)
            qaf = (ca / cf) * mask_a + (cf / ca) * (1 - mask_a)
            qbf = (cb / cf) * mask_b + (cf / cb) * (1 - mask_b)
            la = ca * ca / (ca * ca + cb * cb)
            lb = cb * cb / (ca * ca + cb * cb)
        else:
            qaf = np.where(ca == cf, 1.0, np.minimum(ca, cf) / np.maximum(ca, cf))
            qbf = np.where(cb == cf, 1.0, np.minimum(cb, cf) / np.maximum(cb, cf))
            tot = ca * ca + cb * cb
            la = np.where(tot > 0, ca * ca / tot, 0.5)
            lb = np.where(tot > 0, cb * cb / tot, 0.5)
    return float(np.mean(la * qaf + lb * qbf))


def qcb(a, b, f, convention: str = "corrected") -> float:
    """Q_CB of fused ``f`` ([0, 255], HxW or HxWx3); 1 is perfect."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    return per_channel(lambda x, y, z: _qcb_gray(x, y, z, convention), a, b, f)
