"""Pixel error between the fused image and the sources: PSNR and RMSE (averaged over the two sources).

Reference: P. Jagalingam, A. V. Hegde, "A review of quality metrics for fused image", Aquatic
Procedia 4, 2015; code followed: VIFB ``metrics/metricsPsnr.m`` and ``metrics/metricsRmse.m``.

Conventions:

- ``vifb``: VIFB's non-standard forms. Its ``mse(X, F)`` is sqrt(Σ (X - F)²) / (MN) (the root of the
  sum, not of the mean), RMSE = (mse(A, F) + mse(B, F)) / 2 and
  PSNR = 20 log10(255 / sqrt((mse(A, F) + mse(B, F)) / 2)), hence the ~60 dB values VIFB reports.
- ``corrected``: MSE_X = mean((X - F)²); RMSE = (sqrt(MSE_A) + sqrt(MSE_B)) / 2 and
  PSNR = 10 log10(255² / ((MSE_A + MSE_B) / 2)) (Jagalingam & Hegde). PSNR is +inf when F equals
  both sources.
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.metrics._common import check_convention, gray, per_channel, prepare


def _vifb_mse(x: np.ndarray, z: np.ndarray) -> float:
    return float(np.sqrt(np.sum((x - z) ** 2)) / x.size)


def _mse(x: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean((x - z) ** 2))


def psnr(a, b, f, convention: str = "corrected") -> float:
    """PSNR (dB) of fused ``f`` against both sources; higher is closer."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        x, y = gray(x), gray(y)
        if convention == "vifb":
            mes = (_vifb_mse(x, z) + _vifb_mse(y, z)) / 2.0
            return 20.0 * np.log10(255.0 / np.sqrt(mes)) if mes > 0 else float("inf")
        mse = (_mse(x, z) + _mse(y, z)) / 2.0
        return 10.0 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")

    return per_channel(one, a, b, f)


def rmse(a, b, f, convention: str = "corrected") -> float:
    """Root-mean-square error of fused ``f`` to the sources, averaged over the two; lower is closer."""
    check_convention(convention)
    a, b, f = prepare(a, b, f)

    def one(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
        x, y = gray(x), gray(y)
        if convention == "vifb":
            return (_vifb_mse(x, z) + _vifb_mse(y, z)) / 2.0
        return (np.sqrt(_mse(x, z)) + np.sqrt(_mse(y, z))) / 2.0

    return per_channel(one, a, b, f)
