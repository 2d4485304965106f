"""Box, gaussian and edge-aware filters on the spatial axes (reflect borders), shared by the training data
(depth prior, degradations, teachers, Fusion Refiner) and the detail path the runtime runs.

The guided filter is He, Sun & Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013), Algorithm 1:
a local linear model q = a·I + b fitted in every (2r+1)² window with regulariser ``eps``, computed with
box filters in O(N) per channel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def box_filter(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)x(2r+1) window on the spatial axes (reflect borders)."""
    size = 2 * int(radius) + 1
    sizes = (size, size) + (1,) * (image.ndim - 2)
    return ndimage.uniform_filter(np.asarray(image, np.float64), size=sizes, mode="reflect")


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur on the spatial axes only (channels untouched)."""
    if sigma <= 0:
        return np.asarray(image, np.float64)
    sigmas = (sigma, sigma) + (0,) * (image.ndim - 2)
    return ndimage.gaussian_filter(np.asarray(image, np.float64), sigma=sigmas, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Gray-guide guided filter (He et al. Algorithm 1); ``src`` may be HxW or HxWxC (per channel)."""
    guide = np.asarray(guide, np.float64)
    if guide.ndim == 3:
        guide = guide.mean(axis=-1)
    src = np.asarray(src, np.float64)
    if src.ndim == 3:
        return np.stack([guided_filter(guide, src[..., c], radius, eps) for c in range(src.shape[-1])], -1)
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(src, radius)
    cov_ip = box_filter(guide * src, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(b, radius)
