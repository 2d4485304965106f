"""Tiled processing for images larger than a backend accepts (a bundle's or an engine profile's maximum).

A wrapper with the :class:`~runtime.backends.base.Backend` interface, so the pipeline and the samplers
run unchanged: every graph call on a large input becomes calls on overlapping windows no larger than
the limit, blended with weights that ramp linearly over the overlap ("feathering").

* VAE encoder: pixel windows -> latent windows, blended in latent space;
* DiT (velocity / regression): latent windows of Z_t, Z_a, Z_b, blended per call. Blending the
  *velocity* at every sampler step, not the final images, is MultiDiffusion's joint-diffusion rule
  (Bar-Tal et al. 2023, Eq. 5 with per-pixel averaging weights): the windows agree on one latent
  trajectory, so no seams appear between independently sampled tiles;
* VAE decoder: latent windows -> pixel windows, blended in pixel space (the tiled-VAE scheme of
  diffusers' ``AutoencoderKL.tiled_decode``).

Windows start on the 16-pixel / 2-latent grid, so the DiT's patches and the VAE's downsampling align
across windows. Each window sees only its own context (attention does not cross windows), which is
the price of tiling: use it when the image is larger than the deployment allows, not otherwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from model.errors import LatentfuseError
from runtime.backends.base import Backend

LATENT_FACTOR = 8   # VAE downsampling
GRID = 16           # pixels per DiT patch (8 x 2): window starts and sizes are multiples of this


def window_starts(size: int, window: int, overlap: int, step: int) -> list[int]:
    """Start offsets of windows of ``window`` covering [0, size) with at least ``overlap`` shared,
    every start a multiple of ``step`` and the last window flush with the end."""
    if window >= size:
        return [0]
    stride = max(step, (window - overlap) // step * step)
    starts = list(range(0, size - window, stride))
    starts.append(size - window)
    return sorted(set(starts))


def ramp(n: int, overlap: int) -> np.ndarray:
    """1-D feathering weights: linear rise over ``overlap`` samples at both ends, 1 inside, never 0."""
    x = np.arange(n, dtype=np.float32)
    ov = max(int(overlap), 1)
    return np.minimum(1.0, np.minimum((x + 1) / (ov + 1), (n - x) / (ov + 1))).astype(np.float32)


def blend(calls, out_shape: Sequence[int], windows, overlap: int) -> np.ndarray:
    """Weighted average of ``calls[i]`` (outputs on ``windows[i]`` = (y, x, h, w)) into ``out_shape``."""
    out = np.zeros(out_shape, np.float32)
    weight = np.zeros(out_shape[-2:], np.float32)
    for value, (y, x, h, w) in zip(calls, windows):
        wgt = ramp(h, overlap)[:, None] * ramp(w, overlap)[None, :]
        out[..., y:y + h, x:x + w] += value * wgt
        weight[y:y + h, x:x + w] += wgt
    return out / weight


class TiledBackend(Backend):
    """``inner`` with every graph call split into windows of at most ``max_size`` (H, W) pixels."""

    def __init__(self, inner: Backend, max_size: tuple[int, int], overlap: int = 64):
        max_h, max_w = (int(v) // GRID * GRID for v in max_size)
        if min(max_h, max_w) < 2 * GRID:
            raise LatentfuseError(f"tiling needs a maximum size of at least {2 * GRID} px, got {max_size}")
        if int(overlap) < GRID:
            raise LatentfuseError(f"tile overlap must be at least {GRID} px, got {overlap}")
        # at most half a window, so every window advances by at least half its size
        overlap = min(int(overlap), min(max_h, max_w) // 2) // GRID * GRID
        self.inner = inner
        self.name = inner.name
        self.heads = inner.heads
        self.max_size = (max_h, max_w)
        self.overlap = overlap
        self.calls = 0  # network calls made on windows (tests, reporting)

    def _windows(self, h: int, w: int, factor: int) -> list[tuple[int, int, int, int]]:
        """Windows (y, x, h, w) in units of 1/``factor`` pixels (1: pixels, 8: latents)."""
        th, tw = self.max_size[0] // factor, self.max_size[1] // factor
        step, ov = GRID // factor, self.overlap // factor
        return [(y, x, min(th, h), min(tw, w))
                for y in window_starts(h, th, ov, step) for x in window_starts(w, tw, ov, step)]

    # ------------------------------------------------------------------ interface
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        b, _, h, w = images.shape
        windows = self._windows(h, w, 1)
        latents = []
        for y, x, wh, ww in windows:
            self.calls += 1
            latents.append(self.inner.encode_images(np.ascontiguousarray(images[:, :, y:y + wh, x:x + ww])))
        f = LATENT_FACTOR
        lat_windows = [(y // f, x // f, wh // f, ww // f) for y, x, wh, ww in windows]
        return blend(latents, (b, latents[0].shape[1], h // f, w // f), lat_windows, self.overlap // f)

    def _dit(self, fn, z_a, z_b, **extra) -> np.ndarray:
        _, _, h, w = z_a.shape
        windows = self._windows(h, w, LATENT_FACTOR)
        outs = []
        for y, x, wh, ww in windows:
            crop = lambda z: np.ascontiguousarray(z[:, :, y:y + wh, x:x + ww])  # noqa: E731
            self.calls += 1
            outs.append(fn(crop(z_a), crop(z_b), **{k: crop(v) if k == "z_t" else v for k, v in extra.items()}))
        return blend(outs, z_a.shape[:2] + (h, w), windows, self.overlap // LATENT_FACTOR)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit(lambda a, b, z_t: self.inner.velocity(z_t, t, a, b, embeds, mask), z_a, z_b, z_t=z_t)

    def regress(self, z_a, z_b, embeds, mask) -> np.ndarray:
        return self._dit(lambda a, b: self.inner.regress(a, b, embeds, mask), z_a, z_b)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        b, _, h, w = latents.shape
        windows = self._windows(h, w, LATENT_FACTOR)
        images = []
        for y, x, wh, ww in windows:
            self.calls += 1
            images.append(self.inner.decode(np.ascontiguousarray(latents[:, :, y:y + wh, x:x + ww])))
        f = LATENT_FACTOR
        px_windows = [(y * f, x * f, wh * f, ww * f) for y, x, wh, ww in windows]
        return blend(images, (b, images[0].shape[1], h * f, w * f), px_windows, self.overlap)

    def encode_prompts(self, prompts):
        return self.inner.encode_prompts(prompts)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def min_image_size(self):
        return self.inner.min_image_size()

    def work_scale(self) -> int:
        return self.inner.work_scale()

    def window(self) -> int:
        return self.inner.window()

    def sampler_defaults(self) -> dict:
        return self.inner.sampler_defaults()

    def describe(self) -> str:
        return f"{self.inner.describe()}, tiled {self.max_size[1]}x{self.max_size[0]} px windows, {self.overlap} px overlap"
