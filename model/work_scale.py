"""The working scale of a model: the factor by which a pipeline enlarges the pair before the VAE.

A small f = 8 VAE cannot render texture finer than its 8 px latent cells (the tiny default's round trip
of a gravel scene is a blur), and Q^AB/F scores exactly those edges. Working at ``k`` times the input
size makes every latent cell cover 8/k input pixels, at k² times the latent tokens:

    pair --upscale(k)--> VAE-Enc --> DiT --> VAE-Dec --downscale(k)--> fused image (input size)

A model records its scale in ``model_index.json`` (``work_scale``, 1 when absent); training encodes its
crops at that scale, and every runtime (torch, ONNX Runtime, TensorRT, the C++ host in
``runtime/cpp/src/image.cpp``) resamples with these two functions, so what a model was trained on is
what it sees. Integer factors only: the downscale is then an exact k x k box mean.

A model may also declare a ``window`` (``model_index.json``; 0 when absent): the largest side, in
enlarged pixels, its networks are run on. The DiT learns its positional structure on training crops
and does not extrapolate to much larger latent grids, so a pipeline runs a larger pair in overlapping
windows of that size (``runtime.backends.tiled``), as it does for an engine's size limit.

    upscale    bicubic (Keys a = -0.75, half-pixel centres, edge clamp: torch's ``interpolate(mode=
               "bicubic", align_corners=False)``), clipped to [0, 1]
    downscale  the mean of each k x k block (torch's ``mode="area"`` for an integer factor)
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.errors import LatentfuseError

MAX_WORK_SCALE = 4
_A = -0.75  # Keys' cubic convolution parameter (torch, OpenCV)


def check_work_scale(value, where: str = "work_scale") -> int:
    """``value`` as an integer in 1..MAX_WORK_SCALE, else a LatentfuseError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or float(value) != int(value):
        raise LatentfuseError(f"{where} must be an integer from 1 to {MAX_WORK_SCALE}, got {value!r}")
    if not 1 <= int(value) <= MAX_WORK_SCALE:
        raise LatentfuseError(f"{where} must be an integer from 1 to {MAX_WORK_SCALE}, got {value!r}")
    return int(value)


def check_window(value, where: str = "window") -> int:
    """``value`` as 0 (no window) or a multiple of 16 of at least 32 pixels, else a LatentfuseError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value and (value < 32 or value % 16)):
        raise LatentfuseError(f"{where} must be 0 (whole images) or a multiple of 16 of at least 32 pixels, got {value!r}")
    return int(value)


def _cubic_taps(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [k*n, 4] (clamped) and weights [k*n, 4] of a k-times bicubic enlargement of n samples."""
    src = (np.arange(k * n, dtype=np.float64) + 0.5) / k - 0.5
    base = np.floor(src)
    t = src - base
    weights = np.stack([
        ((_A * (t + 1) - 5 * _A) * (t + 1) + 8 * _A) * (t + 1) - 4 * _A,
        ((_A + 2) * t - (_A + 3)) * t * t + 1,
        ((_A + 2) * (1 - t) - (_A + 3)) * (1 - t) * (1 - t) + 1,
        ((_A * (2 - t) - 5 * _A) * (2 - t) + 8 * _A) * (2 - t) - 4 * _A,
    ], axis=1)
    index = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n - 1)
    return index, weights.astype(np.float32)


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise LatentfuseError(f"{what}: expected an HxW or HxWxC image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise LatentfuseError(f"{what}: expected a float image in [0, 1], got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """An HxW[xC] float image in [0, 1], enlarged ``factor`` times (bicubic, clipped to [0, 1])."""
    k = check_work_scale(factor, "upscale factor")
    img = _check_image(image, "upscale")
    if k == 1:
        return img
    rows, wr = _cubic_taps(img.shape[0], k)
    cols, wc = _cubic_taps(img.shape[1], k)
    shape = (-1,) + (1,) * (img.ndim - 1)
    tall = sum(img[rows[:, j]] * wr[:, j].reshape(shape) for j in range(4))
    shape = (1, -1) + (1,) * (img.ndim - 2)
    out = sum(tall[:, cols[:, j]] * wc[:, j].reshape(shape) for j in range(4))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """An HxW[xC] float image shrunk ``factor`` times by k x k box means; H and W must be multiples of k."""
    k = check_work_scale(factor, "downscale factor")
    img = _check_image(image, "downscale")
    if k == 1:
        return img
    h, w = img.shape[:2]
    if h % k or w % k:
        raise LatentfuseError(f"downscale: a {w}x{h} image does not divide by the factor {k}")
    blocks = img.reshape((h // k, k, w // k, k) + img.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)
