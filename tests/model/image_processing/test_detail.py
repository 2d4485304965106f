"""The pixel-space detail path (model/image_processing/detail.py) on small generated images."""

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import rgb_to_ycbcr
from latentfuse.model.image_processing.detail import DetailConfig, noise_sigma, restore_detail
from latentfuse.model.image_processing.filters import gaussian


def scene(h=96, w=128, seed=0):
    """Smooth shading plus fine texture (stripes and a checker) in [0.2, 0.8], RGB with a tint."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y = 0.5 + 0.15 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    y += 0.08 * np.sign(np.sin(xx / 1.7)) * (xx < w / 2) + 0.08 * (((xx // 3 + yy // 3) % 2) - 0.5) * (xx >= w / 2)
    y += 0.01 * rng.standard_normal((h, w)).cumsum(1) / np.sqrt(w)
    y = np.clip(y, 0.2, 0.8)
    return np.stack([y, np.clip(0.9 * y + 0.08, 0, 1), np.clip(0.8 * y + 0.1, 0, 1)], -1).astype(np.float32)


def psnr(x, ref):
    return 10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - ref) ** 2))


def multi_focus(truth):
    """A sharp on the left, B sharp on the right (the other half defocused)."""
    blur = gaussian(truth, 2.5).astype(np.float32)
    left = np.zeros(truth.shape[:2], bool)
    left[:, : truth.shape[1] // 2] = True
    a = np.where(left[..., None], truth, blur)
    b = np.where(left[..., None], blur, truth)
    return a, b


def test_restores_the_sources_detail_into_a_smoothed_fused_image():
    truth = scene()
    a, b = multi_focus(truth)
    fused = gaussian(truth, 2.0).astype(np.float32)  # what a VAE round trip leaves of the fused image
    out = restore_detail(fused, a, b)
    assert out.shape == fused.shape and out.dtype == np.float32
    assert psnr(out, truth) > psnr(fused, truth) + 3.0
    again = restore_detail(fused, a, b)
    np.testing.assert_array_equal(out, again)  # deterministic


def test_colour_comes_from_the_fused_image_and_gray_stays_gray():
    truth = scene(seed=1)
    a, b = multi_focus(truth)
    fused = gaussian(truth, 2.0).astype(np.float32)
    out = restore_detail(fused, a, b[..., 1])  # VIF-like: gray second source
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(rgb_to_ycbcr(out)[inner][..., 1:], rgb_to_ycbcr(fused)[inner][..., 1:], atol=2e-3)
    gray = restore_detail(fused[..., 0], a[..., 0], b[..., 0])
    assert gray.shape == fused.shape[:2]


def test_rgb_channels_bring_colour_edges_back_with_one_choice_for_all_three():
    """A colour edge of equal luma (red | green at the same Y) is invisible to the luma path; "rgb" restores it."""
    h, w = 64, 96
    truth = np.empty((h, w, 3), np.float32)
    truth[:, : w // 4] = (0.7, 0.35, 0.4)  # the edge lies in A's sharp half
    y_left = 0.299 * 0.7 + 0.587 * 0.35 + 0.114 * 0.4
    truth[:, w // 4:] = (0.3, (y_left - 0.299 * 0.3 - 0.114 * 0.3) / 0.587, 0.3)  # same luma, another hue
    truth += scene(h, w, seed=3) - 0.5  # shared texture on all channels
    truth = np.clip(truth, 0, 1)
    a, b = multi_focus(truth)
    fused = gaussian(truth, 3.0).astype(np.float32)
    luma_out = restore_detail(fused, a, b, DetailConfig(sigma=4.0, radius=2))
    rgb_out = restore_detail(fused, a, b, DetailConfig(sigma=4.0, radius=2, channels="rgb"))
    edge = (slice(8, -8), slice(w // 4 - 6, w // 4 + 6))
    chroma = lambda x: rgb_to_ycbcr(x)[edge][..., 1:]  # noqa: E731
    err_luma = np.abs(chroma(luma_out) - chroma(truth)).mean()
    err_rgb = np.abs(chroma(rgb_out) - chroma(truth)).mean()
    assert err_rgb < 0.5 * err_luma
    assert psnr(rgb_out, truth) > psnr(luma_out, truth) + 1.0
    # a gray fused image has no colour to restore: "rgb" is the luma path
    gray = (fused[..., 0], a[..., 0], b[..., 0])
    np.testing.assert_array_equal(restore_detail(*gray, DetailConfig(channels="rgb")), restore_detail(*gray))


def test_noise_in_the_sources_does_not_come_back():
    clean = np.full((96, 128), 0.5, np.float32) + 0.1 * np.sin(np.mgrid[0:96, 0:128][1] / 15.0).astype(np.float32)
    rng = np.random.default_rng(0)
    a = np.clip(clean + rng.normal(0, 15 / 255, clean.shape), 0, 1).astype(np.float32)
    b = np.clip(clean + rng.normal(0, 15 / 255, clean.shape), 0, 1).astype(np.float32)
    gated = restore_detail(clean, a, b)
    ungated = restore_detail(clean, a, b, DetailConfig(noise_k=0.0))
    assert 255 * noise_sigma(ungated) > 8.0  # without the gate the noise is back ...
    assert 255 * noise_sigma(gated) < 2.0    # ... with it the decoded image stays clean
    assert noise_sigma(clean) < 1e-3


def test_bad_input_is_one_line_naming_the_problem():
    img = scene()
    with pytest.raises(LatentfuseError, match=r"sizes differ: fused \(96, 128\), A \(96, 128\), B \(48, 64\)"):
        restore_detail(img, img, img[::2, ::2])
    with pytest.raises(LatentfuseError, match="source A must be float"):
        restore_detail(img, (img * 255).astype(np.uint8), img)
    with pytest.raises(LatentfuseError, match=r"the fused image must be an HxW or HxWx3 image.*\(96, 128, 4\)"):
        restore_detail(np.zeros((96, 128, 4), np.float32), img, img)
    with pytest.raises(LatentfuseError, match="radius must be a non-negative integer"):
        DetailConfig(radius=1.5)
    with pytest.raises(LatentfuseError, match="channels must be one of luma, rgb, got 'ycbcr'"):
        DetailConfig(channels="ycbcr")
    with pytest.raises(LatentfuseError, match="sigma must be positive"):
        DetailConfig(sigma=0)
