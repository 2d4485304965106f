"""Each operator changes the image in the way its docstring says."""

import numpy as np
import pytest

from latentfuse.model.data import degradations as D


def rng(seed=0):
    return np.random.default_rng(seed)


def luma(x):
    return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x


def test_sampled_parameters_stay_in_documented_ranges():
    g = rng()
    for name, spec in D.RANGES.items():
        for _ in range(30):
            params = D.sample_params(name, g)
            for key, value in params.items():
                if isinstance(spec[key], list):
                    assert value in spec[key]
                else:
                    lo, hi = spec[key]
                    assert lo <= value <= hi, (name, key, value)


@pytest.mark.parametrize("name", list(D.OPS))
def test_every_op_keeps_shape_dtype_range_for_gray_and_rgb(name, image, gray_image):
    for img in (image, gray_image):
        out = D.apply(name, img, D.sample_params(name, rng(1)), rng(2))
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert not np.array_equal(out, img), name


def test_noise_raises_high_frequency_energy(image, hf):
    assert hf(D.noise(image, 15 / 255, rng())) > 3 * hf(image)


@pytest.mark.parametrize("op,kwargs", [
    (D.gaussian_blur, {"sigma": 2.0}),
    (D.motion_blur, {"length": 11, "angle": 30.0}),
    (D.downsample, {"scale": 3.0, "order": 3}),
])
def test_blur_and_downsample_lower_high_frequency_energy(image, hf, op, kwargs):
    assert hf(op(image, **kwargs)) < 0.5 * hf(image)


def test_motion_blur_is_directional(gray_image):
    kernel = D.motion_kernel(9, 0.0)
    assert kernel.sum() == pytest.approx(1.0)
    assert np.count_nonzero(kernel.sum(axis=1) > 1e-6) == 1  # horizontal line: one row of weights
    noise = np.random.default_rng(0).random((64, 64))
    out = D.motion_blur(noise, 15, 0.0)
    # Smeared along x: neighbours in a row correlate far more than neighbours in a column.
    dx = np.mean(np.abs(np.diff(out, axis=1)))
    dy = np.mean(np.abs(np.diff(out, axis=0)))
    assert dx < 0.5 * dy


def test_jpeg_introduces_block_boundaries(make_image):
    img = make_image(96, 128, rgb=False)
    out = D.jpeg(img, quality=10)
    err = np.abs(out - img)
    assert err.mean() > 2 / 255
    d = np.abs(np.diff(out.astype(np.float64), axis=1)) - np.abs(np.diff(img.astype(np.float64), axis=1))
    at_edges = d[:, 7::8].mean()  # between columns 8k-1 and 8k: the DCT block boundaries
    inside = np.delete(d, np.s_[7::8], axis=1).mean()
    assert at_edges > inside + 1e-3


def test_haze_lowers_contrast_more_where_depth_is_larger(make_image):
    img = make_image(64, 128, rgb=True)
    depth = np.repeat(np.linspace(0, 1, 128)[None, :], 64, axis=0)
    out = D.haze(img, depth, beta=2.0, airlight=0.9)
    near_ratio = luma(out)[:, :32].std() / luma(img)[:, :32].std()
    far_ratio = luma(out)[:, -32:].std() / luma(img)[:, -32:].std()
    assert far_ratio < 0.5 * near_ratio
    # Far pixels approach the airlight.
    assert abs(out[:, -8:].mean() - 0.9) < abs(img[:, -8:].mean() - 0.9)


def test_exposure_and_contrast_ops(image):
    assert luma(D.low_exposure(image, gamma=2.0, gain=0.5)).mean() < 0.6 * luma(image).mean()
    high = D.high_exposure(image, stops=2.0)
    assert luma(high).mean() > luma(image).mean() + 0.1
    assert (high >= 0.999).mean() > (image >= 0.999).mean()  # clipped highlights
    low = D.low_contrast(image, factor=0.4)
    assert luma(low).std() == pytest.approx(0.4 * luma(image).std(), rel=0.05)
    assert luma(low).mean() == pytest.approx(luma(image).mean(), abs=0.01)


def test_rain_adds_bright_streaks_along_its_direction():
    flat = np.full((96, 96), 0.3, np.float32)
    out = D.rain(flat, rng(), density=0.004, length=21, angle=0.0, opacity=0.6)
    diff = out - flat
    assert diff.min() >= -1e-6 and (diff > 0.05).mean() > 0.02  # only brightens, visibly
    # Vertical streaks (angle 0 = falling straight down): correlated along rows' direction (y).
    c_y = np.corrcoef(diff[:-4].ravel(), diff[4:].ravel())[0, 1]
    c_x = np.corrcoef(diff[:, :-4].ravel(), diff[:, 4:].ravel())[0, 1]
    assert c_y > 0.5 and c_x < 0.3


def test_snow_adds_bright_isotropic_particles():
    from scipy import ndimage

    flat = np.full((96, 96), 0.3, np.float32)
    out = D.snow(flat, rng(), density=0.003, flake=1.2, opacity=0.9, veil=0.05)
    diff = out - flat
    assert diff.min() >= -1e-6
    blobs, count = ndimage.label(diff > 0.3)
    assert count >= 10  # many separate particles
    c_y = np.corrcoef(diff[:-2].ravel(), diff[2:].ravel())[0, 1]
    c_x = np.corrcoef(diff[:, :-2].ravel(), diff[:, 2:].ravel())[0, 1]
    assert abs(c_y - c_x) < 0.15  # round flakes, unlike rain


@pytest.mark.parametrize("axis", ["columns", "rows"])
def test_ir_strips_darken_whole_columns_or_rows(gray_image, axis):
    out = D.ir_strips(gray_image, rng(), count=6, width=2, depth=0.5, axis=axis)
    ratio = out / gray_image
    assert ratio.max() <= 1.0 + 1e-4  # never brightens
    lines = ratio.min(axis=0 if axis == "columns" else 1)  # per column (or row): its darkest ratio
    full = ratio.max(axis=0 if axis == "columns" else 1)
    dark = lines < 0.8
    assert 6 <= dark.sum() <= 12
    np.testing.assert_allclose(lines[dark], full[dark], atol=1e-3)  # the whole line is darkened evenly


def test_random_content_is_seeded(image):
    for name in D.NEEDS_RNG:
        p = D.sample_params(name, rng(5))
        a = D.apply(name, image, p, rng(9))
        b = D.apply(name, image, p, rng(9))
        c = D.apply(name, image, p, rng(10))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
