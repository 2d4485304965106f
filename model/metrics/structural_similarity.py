"""SSIM of the fused image against both sources.

Reference: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE TIP 13(4), 2004; code followed: VIFB
``metrics/metricsSsim.m`` (Wang's ``ssim_index``: 11x11 Gaussian window σ = 1.5, K = (0.01, 0.03),
L = 255, ``filter2 'valid'``, mean of the SSIM map).

Conventions:

- ``vifb``: SSIM(A, F) + SSIM(B, F) (a sum, range up to 2), as VIFB stores it.
- ``corrected``: the mean of the two, so that 1 means identical to both sources.

RGB sources with a gray fused image are converted with ``rgb2gray`` rounded to 8 bits, as MATLAB
does for the uint8 sources VIFB passes in.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare, require_size
from latentfuse.model.metrics._matlab import filter2_gaussian

K1, K2, L = 0.01, 0.03, 255.0
WINDOW, SIGMA = 11, 1.5


def _blur(z: np.ndarray) -> np.ndarray:
    return filter2_gaussian(z, WINDOW, SIGMA, "valid")


def _moments(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and variance under the Gaussian window ('valid' region)."""
    mu = _blur(z)
    return mu, _blur(z * z) - mu * mu


def _ssim_with(x: np.ndarray, y: np.ndarray, y_moments: tuple[np.ndarray, np.ndarray]) -> float:
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2
    (mx, sx2), (my, sy2) = _moments(x), y_moments
    sxy = _blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sx2 + sy2 + c2))
    return float(ssim_map.mean())


def ssim_index(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two 2-D [0, 255] images (Wang et al. 2004, Gaussian window, 'valid' region)."""
    return _ssim_with(x, y, _moments(y))


def ssim(a, b, f, convention: str = "corrected") -> float:
    """SSIM of fused ``f`` to sources ``a`` and ``b`` (sum for ``vifb``, mean for ``corrected``)."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)
    require_size(f, WINDOW, "ssim")

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        z_moments = _moments(z)  # shared by both sources
        total = _ssim_with(gray(x, uint8=True), z, z_moments) + _ssim_with(gray(y, uint8=True), z, z_moments)
        return total if convention == "vifb" else total / 2.0

    return per_channel(one, a, b, f)
