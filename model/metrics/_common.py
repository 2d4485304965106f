"""Input checking, the two conventions, and the VIFB colour handling shared by every metric.

Inputs are float arrays on the [0, 255] scale, HxW or HxWx3; the three images must share H and W.
Colour handling follows the VIFB wrappers (``metrics*.m``): when the fused image is RGB, the metric
is computed per channel k against channel k of each RGB source (a gray source is used as is for every
channel) and the channel values are averaged. When the fused image is gray, RGB sources are
converted with MATLAB ``rgb2gray`` inside the metric. A few metrics only look at the fused image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.metrics._matlab import rgb2gray

CONVENTIONS = ("vifb", "corrected")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise LatentfuseError(f"unknown metric convention {convention!r}; expected one of {CONVENTIONS}")
    return convention


def as_image(x, name: str) -> np.ndarray:
    """Validate one image (HxW or HxWx3, finite) and return it as float64."""
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise LatentfuseError(f"metric input {name!r} has shape {arr.shape}; expected HxW or HxWx3")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise LatentfuseError(f"metric input {name!r} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise LatentfuseError(f"metric input {name!r} contains NaN or Inf")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise LatentfuseError(f"metric input {name!r} is {arr.shape[0]}x{arr.shape[1]}; need at least 2x2")
    return arr


def prepare(a, b, f) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate sources ``a``, ``b`` and fused ``f`` ([0, 255] scale) and check that their sizes agree."""
    a, b, f = as_image(a, "a"), as_image(b, "b"), as_image(f, "fused")
    if not (a.shape[:2] == b.shape[:2] == f.shape[:2]):
        raise LatentfuseError(
            f"metric inputs differ in size: a {a.shape}, b {b.shape}, fused {f.shape}"
        )
    lo, hi = min(a.min(), b.min(), f.min()), max(a.max(), b.max(), f.max())
    if lo < -1.0 or hi > 256.0:
        raise LatentfuseError(
            f"metric inputs span [{lo:g}, {hi:g}]; expected the [0, 255] scale (multiply [0, 1] images by 255)"
        )
    return a, b, f


def require_size(x: np.ndarray, minimum: int, metric: str) -> None:
    if min(x.shape[:2]) < minimum:
        raise LatentfuseError(
            f"{metric} needs images of at least {minimum}x{minimum} pixels, got {x.shape[0]}x{x.shape[1]}"
        )


def gray(x: np.ndarray, uint8: bool = False) -> np.ndarray:
    """Gray version of ``x`` (MATLAB ``rgb2gray``; ``uint8`` as for a uint8 MATLAB array)."""
    return rgb2gray(x, uint8=uint8) if x.ndim == 3 else x


def per_channel(
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
) -> float:
    """VIFB colour wrapper: ``fn`` on each channel of an RGB fused image, averaged.

    A gray fused image goes to ``fn`` with the sources unchanged (``fn`` converts RGB sources).
    """
    if f.ndim == 2:
        return float(fn(a, b, f))
    values = [
        fn(a[..., k] if a.ndim == 3 else a, b[..., k] if b.ndim == 3 else b, f[..., k])
        for k in range(f.shape[-1])
    ]
    return float(np.mean(values))


def fused_channels(f: np.ndarray) -> list[np.ndarray]:
    """The 2-D channels of the fused image (one for gray)."""
    return [f] if f.ndim == 2 else [f[..., k] for k in range(f.shape[-1])]
