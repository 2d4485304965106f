"""Colour: full-range BT.601 YCbCr, the colour space fusion methods fuse in (luminance fused, chroma
carried); luma; gray <-> RGB.

Most fusion methods fuse the Y channel only; a colour source's Cb/Cr are kept (VIF: from the visible
image) or, when both sources have colour (MEF / MFF), merged with the saturation-weighted rule of
DeepFuse (Prabhakar et al., ICCV 2017): C = Σ C_n·|C_n - 0.5| / Σ |C_n - 0.5|.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from latentfuse.model.errors import LatentfuseError

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
#: BT.601 luma weights as rounded in the literature (G's is 0.587; _KG is 0.5870000000000001)
BT601 = (0.299, 0.587, 0.114)
LUMA_FORMS = ("ycbcr", "dot")


def _y(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return _KR * r + _KG * g + _KB * b


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    r, b = rgb[..., 0], rgb[..., 2]
    y = _y(rgb)
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


def luma(image: np.ndarray, form: str = "ycbcr", dtype=np.float64) -> np.ndarray:
    """BT.601 luma of an HxWx3 image in ``dtype``; any other shape is returned as it is (cast to ``dtype``).

    Two forms of one formula, kept apart because their results differ in the last bit (about 2e-16) and
    each caller's numbers are pinned (demo outputs, the C++ host's test vectors, the training data):

    * ``"ycbcr"``: Kr·R + Kg·G + Kb·B term by term with Kg = 1 - Kr - Kb, exactly the Y of
      :func:`rgb_to_ycbcr` (the detail path, the teachers, the selection and the refiner);
    * ``"dot"``: one dot product with :data:`BT601` in ``dtype`` (the data synthesis and degradations in
      float64, :func:`to_gray` in float32).
    """
    img = np.asarray(image, dtype)
    if img.ndim != 3:
        return img
    if form == "ycbcr":
        return _y(img)
    if form == "dot":
        return img @ np.array(BT601, dtype)
    raise LatentfuseError(f"unknown luma form {form!r}: choose {', '.join(LUMA_FORMS)}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxW float32 luma (:func:`luma` ``"dot"`` in float32); HxW and HxWx1 -> HxW float32."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return luma(arr, "dot", np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    raise LatentfuseError(f"to_gray expects HxW or HxWx3, got shape {arr.shape}")


def to_rgb(image: np.ndarray, dtype=np.float32) -> np.ndarray:
    """HxW (or HxWx1) -> HxWx3 by repetition; HxWx3 unchanged. Cast to ``dtype`` first (None: kept)."""
    arr = np.asarray(image, dtype=dtype)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    raise LatentfuseError(f"to_rgb expects HxW or HxWx3, got shape {arr.shape}")


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
