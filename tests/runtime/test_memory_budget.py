"""A fuse call's host memory is bounded by its tiles, chunks and strips, not by the whole image (issue 31).

The pipeline's own numpy allocations are traced (tracemalloc) on a stand-in backend whose networks are
a few cheap numpy operations, so what is measured is the host side: padding, the VAE tiles' blending,
the DiT windows' batches, the decoded image and the detail path. Two pairs of the same width, one four
times as tall as the other, run through the same plan; the extra memory of the tall one may only be the
whole-image arrays the pipeline is meant to hold (the model-range pair and one image's padded copy while
preparing, later the decoded image and the result), never intermediates per pixel of the whole image
(the float64 planes of a whole-image detail path alone would be ~20 images' worth).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings
from latentfuse.runtime.backends.base import Backend
from latentfuse.runtime.model_info import ModelInfo

# the bundled default's parameter sets: sigma 16 px, radius 8, on every RGB channel
SETTINGS = DetailSettings.for_configs(DetailConfig(sigma=16.0, radius=8, fused_candidate=False, noise_k=0.0,
                                                   channels="rgb"),
                                      DetailConfig(sigma=4.0, radius=8, noise_k=3.0, channels="rgb"))


class CheapBackend(Backend):
    """The four graphs' shapes, none of their cost: 8x8 means for the encoder, 8x8 repeats for the
    decoder, the mean of the two sources for the DiT."""

    name = "cheap"
    heads = ("flow", "regression")

    def encode_images(self, images):
        b, c, h, w = images.shape
        means = images.reshape(b, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
        return np.concatenate([means] * 6, axis=1)[:, :16].astype(np.float32)

    def encode_prompts(self, prompts):
        return np.zeros((len(prompts), 4, 8), np.float32), np.ones((len(prompts), 4), np.int64)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        return 0.5 * (z_a + z_b) - z_t

    def regress(self, z_a, z_b, embeds, mask):
        return 0.5 * (z_a + z_b)

    def decode(self, latents):
        return np.repeat(np.repeat(latents[:, :3], 8, axis=2), 8, axis=3)


# the model: a 128 px window and the detail path
INFO = ModelInfo(heads=CheapBackend.heads, window=128, detail=SETTINGS)


def _traced_peak(pipe, height, width):
    rng = np.random.default_rng(0)
    a = rng.random((height, width, 3), dtype=np.float32)
    b = rng.random((height, width), dtype=np.float32)
    tracemalloc.start()
    try:
        result = pipe(a, b, task="vif", mode="regression", max_memory="8G")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, result


def test_memory_grows_with_the_whole_image_arrays_only():
    from latentfuse.runtime.pipeline import Pipeline

    pipe = Pipeline(CheapBackend(), INFO)
    width, short, tall = 512, 1536, 4096  # both with middle strips (context above and below)
    peak_short, r_short = _traced_peak(pipe, short, width)
    peak_tall, r_tall = _traced_peak(pipe, tall, width)
    # the same plan at both sizes: VAE tiles, DiT chunks, detail strips
    for key in ("vae_tile", "dit_batch", "detail_rows"):
        assert r_short.info["memory"][key] == r_tall.info["memory"][key], key
    assert r_tall.info["memory"]["detail_rows"] is not None and r_tall.info["memory"]["vae_tile"] is not None
    image = 3 * 4 * width * (tall - short)  # the extra bytes of one float32 RGB image
    # held at once at most: the model-range pair (2 images) while encoding, the decoded image and the result
    # (2) in the detail path, and a padded copy of one image (1) where the size is off the 16 px grid (not
    # here). 3 leaves a margin, no room for a whole-image intermediate: one float64 plane per pixel is 2/3
    # of an image, a float64 RGB copy 2, the detail path's planes over the whole image about 20.
    growth = (peak_tall - peak_short) / image
    assert growth < 3.0, f"host memory grows by {growth:.2f} float32 images per image (whole-image intermediates)"
    assert np.isfinite(r_tall.image).all() and r_tall.image.shape == (tall, width, 3)
