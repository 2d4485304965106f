"""Gradient-based sharpness of the fused image: spatial frequency (SF), average gradient (AG) and edge
intensity (EI). None of them looks at the sources (``a``, ``b`` are only validated).

References: SF, A. M. Eskicioglu, P. S. Fisher, "Image quality measures and their performance", IEEE
Trans. Commun. 43(12), 1995; AG, G. Cui et al., "Detail preserved fusion of visible and infrared
images using regional saliency extraction and multi-scale image decomposition", Optics Communications
341, 2015; EI, B. Rajalingam, R. Priya, Int. J. Eng. Sci. Invention, 2018. Code followed: VIFB
``metrics/metricsSpatial_frequency.m``, ``metricsAvg_gradient.m``, ``metricsEdge_intensity.m``.

- SF = sqrt(RF² + CF²), RF² = Σ (F[i, j] - F[i, j-1])² / (MN), CF² likewise down the columns.
- AG = Σ sqrt((Fx² + Fy²) / 2) / ((M-1)(N-1)).
- EI = mean Sobel gradient magnitude (``imfilter`` with replicated borders); RGB: over all channels.

Conventions:

- ``vifb``: SF of an RGB image puts the three channels side by side in one M x 3N image (MATLAB's
  ``size`` folds the channels into the columns), which adds two seams of spurious differences; AG
  uses MATLAB ``gradient`` (central differences, one-sided at the borders) summed over all M·N pixels
  but divided by (M-1)(N-1).
- ``corrected``: SF per channel, averaged; AG from forward differences over the (M-1)(N-1) pixels
  that have both, as in Cui et al.
EI is the same in both.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, fused_channels, prepare
from latentfuse.model.metrics._matlab import gradient, imfilter_replicate

_SOBEL = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])  # fspecial('sobel')


def _sf_gray(x: np.ndarray) -> float:
    rf = np.sum(np.diff(x, axis=1) ** 2) / x.size
    cf = np.sum(np.diff(x, axis=0) ** 2) / x.size
    return float(np.sqrt(rf + cf))


def sf(a, b, f, convention: str = "corrected") -> float:
    """Spatial frequency of fused ``f``."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    if convention == "vifb" and f.ndim == 3:
        return _sf_gray(np.concatenate(fused_channels(f), axis=1))
    return float(np.mean([_sf_gray(c) for c in fused_channels(f)]))


def _ag_gray(x: np.ndarray, convention: str) -> float:
    m, n = x.shape
    if convention == "vifb":
        dx, dy = gradient(x)
    else:
        dx = np.diff(x, axis=1)[:-1, :]
        dy = np.diff(x, axis=0)[:, :-1]
    return float(np.sum(np.sqrt((dx * dx + dy * dy) / 2.0)) / ((m - 1) * (n - 1)))


def ag(a, b, f, convention: str = "corrected") -> float:
    """Average gradient of fused ``f``; RGB: per-channel mean."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    return float(np.mean([_ag_gray(c, convention) for c in fused_channels(f)]))


def ei(a, b, f, convention: str = "corrected") -> float:
    """Edge intensity (mean Sobel magnitude) of fused ``f``; the same in both conventions."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    mags = []
    for c in fused_channels(f):
        gx = imfilter_replicate(c, _SOBEL)
        gy = imfilter_replicate(c, _SOBEL.T)
        mags.append(np.sqrt(gx * gx + gy * gy).mean())
    return float(np.mean(mags))
