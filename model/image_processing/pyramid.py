"""Gaussian / Laplacian pyramids (Burt & Adelson, 1983) for pyramid-domain fusion rules.

``expand`` resizes to the exact finer shape, so any image size works and collapsing a Laplacian pyramid
reconstructs the image exactly (each level stores what the expand of the coarser level misses).
"""

from __future__ import annotations

import numpy as np

from latentfuse.model.image_processing.filters import gaussian


def max_levels(shape: tuple[int, ...], smallest: int = 4, cap: int = 8) -> int:
    """Levels until the short side would drop below ``smallest`` pixels."""
    short = min(shape[:2])
    levels = 1
    while short // 2 >= smallest and levels < cap:
        short //= 2
        levels += 1
    return levels


def reduce(image: np.ndarray) -> np.ndarray:
    return gaussian(image, 1.0)[::2, ::2]


def expand(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from skimage.transform import resize

    return resize(image, tuple(shape[:2]) + image.shape[2:], order=1, mode="reflect", anti_aliasing=False)


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = [np.asarray(image, np.float64)]
    for _ in range(levels - 1):
        pyr.append(reduce(pyr[-1]))
    return pyr


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    gauss = gaussian_pyramid(image, levels)
    return [g - expand(g_next, g.shape) for g, g_next in zip(gauss[:-1], gauss[1:])] + [gauss[-1]]


def collapse(pyramid: list[np.ndarray]) -> np.ndarray:
    out = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        out = level + expand(out, level.shape)
    return out
