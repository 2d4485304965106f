"""Full-range BT.601 YCbCr, the colour space fusion methods fuse in (luminance fused, chroma carried).

Most fusion methods fuse the Y channel only; a colour source's Cb/Cr are kept (VIF: from the visible
image) or, when both sources have colour (MEF / MFF), merged with the saturation-weighted rule of
DeepFuse (Prabhakar et al., ICCV 2017): C = Σ C_n·|C_n - 0.5| / Σ |C_n - 0.5|.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = _KR * r + _KG * g + _KB * b
    cb = 0.5 + (b - y) / (2 * (1 - _KB))
    cr = 0.5 + (r - y) / (2 * (1 - _KR))
    return np.stack([y, cb, cr], -1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    ycc = np.asarray(ycc, np.float64)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    r = y + 2 * (1 - _KR) * cr
    b = y + 2 * (1 - _KB) * cb
    g = (y - _KR * r - _KB * b) / _KG
    return np.clip(np.stack([r, g, b], -1), 0.0, 1.0)


def luma(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float64)
    return rgb_to_ycbcr(img)[..., 0] if img.ndim == 3 else img


def merge_chroma(ca: np.ndarray, cb: np.ndarray, tau: float = 0.5) -> np.ndarray:
    """DeepFuse chroma rule: the more saturated source dominates each pixel."""
    wa, wb = np.abs(ca - tau), np.abs(cb - tau)
    den = wa + wb
    return np.where(den > 1e-6, (ca * wa + cb * wb) / np.maximum(den, 1e-6), 0.5 * (ca + cb))


def fuse_luma(a: np.ndarray, b: np.ndarray, fuse: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Run a gray fusion rule on the Y channels and put colour back (gray in, gray out)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim == 2 and b.ndim == 2:
        return np.clip(fuse(a, b), 0, 1)
    ya, yb = luma(a), luma(b)
    y = np.clip(fuse(ya, yb), 0, 1)
    if a.ndim == 3 and b.ndim == 3:
        ia, ib = rgb_to_ycbcr(a), rgb_to_ycbcr(b)
        chroma = [merge_chroma(ia[..., k], ib[..., k]) for k in (1, 2)]
    else:
        src = rgb_to_ycbcr(a if a.ndim == 3 else b)
        chroma = [src[..., 1], src[..., 2]]
    return ycbcr_to_rgb(np.stack([y] + chroma, -1))
