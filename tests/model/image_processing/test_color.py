"""Colour: the two luma forms (each caller's numbers kept), gray <-> RGB."""

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.color import BT601, luma, rgb_to_ycbcr, to_gray, to_rgb, ycbcr_to_rgb


def _rgb(dtype=np.float64):
    return np.random.default_rng(0).random((17, 12, 3)).astype(dtype)


def test_ycbcr_luma_is_the_y_of_ycbcr_and_round_trips():
    x = _rgb()
    assert np.array_equal(luma(x), rgb_to_ycbcr(x)[..., 0])
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-12)


def test_dot_luma_is_one_dot_product_in_the_dtype():
    x = _rgb()
    assert np.array_equal(luma(x, "dot"), x @ np.array(BT601))
    x32 = _rgb(np.float32)
    assert np.array_equal(luma(x32, "dot"), x32 @ np.array(BT601))  # float64 product of float32 data
    assert luma(x32, "dot", np.float32).dtype == np.float32
    np.testing.assert_allclose(luma(x, "dot"), luma(x), atol=1e-15)  # the forms differ in the last bit only


def test_gray_passes_through_and_unknown_form_is_an_error():
    g = _rgb()[..., 0]
    assert np.array_equal(luma(g), g) and np.array_equal(luma(g, "dot"), g)
    with pytest.raises(LatentfuseError, match="unknown luma form 'lab'"):
        luma(_rgb(), "lab")


def test_to_gray_and_to_rgb():
    x = _rgb(np.float32)
    assert np.array_equal(to_gray(x), x @ np.array(BT601, np.float32)) and to_gray(x).dtype == np.float32
    assert to_gray(x[..., :1]).shape == (17, 12)
    assert to_rgb(x[..., 0]).shape == (17, 12, 3) and to_rgb(x[..., 0]).dtype == np.float32
    assert to_rgb(_rgb()[..., 0], None).dtype == np.float64
    assert to_rgb(x) is x
    for bad in (np.zeros((4, 4, 2)), np.zeros((4,))):
        with pytest.raises(LatentfuseError):
            to_gray(bad)
        with pytest.raises(LatentfuseError):
            to_rgb(bad)
