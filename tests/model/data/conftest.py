"""Shared small test images for the data-pipeline tests (no files, no network)."""

from __future__ import annotations

import numpy as np
import pytest


def textured(h: int = 96, w: int = 128, seed: int = 0, rgb: bool = True) -> np.ndarray:
    """A smooth-plus-texture image in [0.15, 0.85]: gradients, a disc, and mid-frequency stripes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.15 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy)
    base += 0.15 * ((yy - 0.35) ** 2 + (xx - 0.5) ** 2 < 0.04)
    base += 0.04 * rng.standard_normal((h, w)).cumsum(1) / np.sqrt(w)
    base = np.clip(base, 0.15, 0.85)
    if not rgb:
        return base.astype(np.float32)
    tint = np.stack([base, np.clip(base * 0.9 + 0.05, 0, 1), np.clip(1.1 * base - 0.05, 0, 1)], -1)
    return tint.astype(np.float32)


def hf_energy(img: np.ndarray) -> float:
    """Mean squared Laplacian response: high-frequency energy."""
    from scipy import ndimage

    g = img.mean(-1) if img.ndim == 3 else img
    return float(np.mean(ndimage.laplace(g.astype(np.float64)) ** 2))


@pytest.fixture
def image() -> np.ndarray:
    return textured()


@pytest.fixture
def gray_image() -> np.ndarray:
    return textured(rgb=False)


@pytest.fixture
def make_image():
    return textured


@pytest.fixture
def hf():
    return hf_energy
