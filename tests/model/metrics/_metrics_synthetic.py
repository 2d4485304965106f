"""Deterministic synthetic source / fused images (no RNG, so pinned values never drift)."""

from __future__ import annotations

import numpy as np


def synthetic(h: int = 96, w: int = 112) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 8-bit-valued sources (a textured one, a blob + ramp) and their rounded average."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.round(127.5 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0))
    b = np.round(np.clip(255 * np.exp(-((x - 70) ** 2 + (y - 40) ** 2) / 900.0) + 0.4 * x, 0, 255))
    f = np.round(0.5 * a + 0.5 * b)
    return a, b, f


def to_rgb(gray: np.ndarray, tint: tuple[float, float, float] = (1.0, 0.9, 0.8)) -> np.ndarray:
    """An RGB version with different, still 8-bit-valued channels."""
    return np.stack([np.round(gray * t) for t in tint], axis=-1)
