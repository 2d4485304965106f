"""MATLAB / Octave image-processing primitives with their exact semantics, vectorised in numpy/scipy.

The VIFB and MEFB reference metrics are MATLAB code; reproducing their values to 5 significant
digits needs the same boundary handling and rounding as the MATLAB built-ins they call:

- ``conv2(x, h, 'same')`` / ``filter2(h, x, 'same'|'valid')``: convolution / correlation with zero
  padding (``'valid'`` keeps only fully overlapped outputs);
- ``imfilter(x, h, 'replicate')``: correlation with edge replication;
- ``fspecial('gaussian', n, sigma)``: sum-normalised, separable Gaussian;
- ``rgb2gray``: luma coefficients from the inverse NTSC (YIQ) matrix, rounded for uint8 input;
- ``round`` / ``int16()``: round half away from zero;
- ``freqspace``, ``blkproc`` (zero-pads partial blocks), ``gradient`` (one-sided at the borders).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

# MATLAB rgb2gray: first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def mround(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: half away from zero (numpy's ``round`` is half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rgb2gray(x: np.ndarray, uint8: bool = False) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an HxWx3 array; ``uint8=True`` mimics a uint8 input (rounded, clipped)."""
    gray = x[..., 0] * RGB2GRAY[0] + x[..., 1] * RGB2GRAY[1] + x[..., 2] * RGB2GRAY[2]
    if uint8:
        gray = np.clip(mround(gray), 0.0, 255.0)
    return gray


def gaussian_1d(n: int, sigma: float) -> np.ndarray:
    """Un-normalised 1-D factor of ``fspecial('gaussian', n, sigma)`` (the 2-D kernel is outer(g, g)/sum²)."""
    half = (n - 1) / 2.0
    x = np.arange(-half, half + 1.0)
    return np.exp(-(x * x) / (2.0 * sigma * sigma))


def correlate_sep(x: np.ndarray, g_rows: np.ndarray, g_cols: np.ndarray, mode: str) -> np.ndarray:
    """``filter2(outer(g_rows, g_cols), x, mode)`` for a separable odd-sized kernel, zero padded.

    ``mode`` is ``'same'`` or ``'valid'`` as in MATLAB.
    """
    out = ndimage.correlate1d(x, g_rows, axis=0, mode="constant", cval=0.0)
    out = ndimage.correlate1d(out, g_cols, axis=1, mode="constant", cval=0.0)
    if mode == "valid":
        r, c = len(g_rows) // 2, len(g_cols) // 2
        out = out[r : out.shape[0] - r, c : out.shape[1] - c]
    return out


def filter2_gaussian(x: np.ndarray, n: int, sigma: float, mode: str) -> np.ndarray:
    """``filter2(fspecial('gaussian', n, sigma), x, mode)``."""
    g = gaussian_1d(n, sigma)
    g = g / g.sum()  # sum(outer(g, g)) = sum(g)^2, so normalising each factor normalises the kernel
    return correlate_sep(x, g, g, mode)


def conv2_same(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``conv2(x, h, 'same')`` for an odd-sized kernel (true convolution, zero padding)."""
    return ndimage.convolve(x, h, mode="constant", cval=0.0)


def filter2_same(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``filter2(h, x, 'same')`` for an odd-sized kernel (correlation, zero padding)."""
    return ndimage.correlate(x, h, mode="constant", cval=0.0)


def imfilter_replicate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``imfilter(x, h, 'replicate')`` on a 2-D double array (correlation, edge replication)."""
    return ndimage.correlate(x, h, mode="nearest")


def freqspace(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``[u, v] = freqspace([m n], 'meshgrid')``: u varies along columns, v along rows, in [-1, 1)."""
    m, n = shape
    fx = (np.arange(n) - np.floor(n / 2.0)) * (2.0 / n)
    fy = (np.arange(m) - np.floor(m / 2.0)) * (2.0 / m)
    return np.meshgrid(fx, fy)


def freq_filter(x: np.ndarray, centred_response: np.ndarray) -> np.ndarray:
    """``real(ifft2(ifftshift(fftshift(fft2(x)) .* H)))`` with H sampled on the ``freqspace`` grid.

    H depends on |frequency| only, so it is even and the product spectrum is conjugate symmetric:
    MATLAB's ``ifft2`` then returns a real array, which a real-input FFT computes directly.
    """
    half = np.fft.ifftshift(centred_response)[:, : x.shape[1] // 2 + 1]
    return sp_fft.irfft2(sp_fft.rfft2(x) * half, s=x.shape)


def blocks(x: np.ndarray, size: int) -> np.ndarray:
    """Split into ``size``x``size`` blocks like ``blkproc`` (partial blocks zero padded): (bh, bw, s, s)."""
    h, w = x.shape
    bh, bw = -(-h // size), -(-w // size)
    padded = np.zeros((bh * size, bw * size), dtype=x.dtype)
    padded[:h, :w] = x
    return padded.reshape(bh, size, bw, size).transpose(0, 2, 1, 3)


def gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[dx, dy] = gradient(x)``: central differences inside, one-sided at the borders."""
    dy, dx = np.gradient(x)
    return dx, dy
