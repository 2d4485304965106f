"""model.work_scale: the resampling every runtime shares, and where a model records its working scale."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.work_scale import check_window, check_work_scale, downscale, upscale


def _torch_resize(img: np.ndarray, **kwargs) -> np.ndarray:
    x = torch.from_numpy(img if img.ndim == 3 else img[..., None]).permute(2, 0, 1)[None]
    out = F.interpolate(x, **kwargs)[0].permute(1, 2, 0).numpy()
    return out if img.ndim == 3 else out[..., 0]


@pytest.mark.parametrize("shape", [(7, 5, 3), (16, 9), (1, 1, 3), (2, 3, 1)])
@pytest.mark.parametrize("k", [2, 3])
def test_upscale_is_torch_bicubic_clipped_and_downscale_is_torch_area(shape, k):
    img = np.random.default_rng(k).random(shape, dtype=np.float32)
    up = upscale(img, k)
    assert up.shape == (k * shape[0], k * shape[1]) + shape[2:] and up.dtype == np.float32
    ref = np.clip(_torch_resize(img, scale_factor=k, mode="bicubic", align_corners=False), 0.0, 1.0)
    np.testing.assert_allclose(up, ref, atol=2e-6)
    assert up.min() >= 0.0 and up.max() <= 1.0  # bicubic overshoot clipped
    np.testing.assert_allclose(downscale(up, k), _torch_resize(up, scale_factor=1 / k, mode="area"), atol=2e-7)


def test_constant_images_survive_the_round_trip_and_k_1_is_the_identity():
    flat = np.full((6, 4, 3), 0.3, np.float32)
    np.testing.assert_allclose(downscale(upscale(flat, 2), 2), flat, atol=1e-6)
    img = np.random.default_rng(0).random((5, 5), dtype=np.float32)
    assert upscale(img, 1) is img and downscale(img, 1) is img


@pytest.mark.parametrize("value", [0, 5, 1.5, "2", True, None])
def test_bad_factors_are_named(value):
    with pytest.raises(LatentfuseError, match="work_scale must be an integer from 1 to 4"):
        check_work_scale(value)


@pytest.mark.parametrize("value", [-16, 16, 40, 64.0, "128", True])
def test_bad_windows_are_named(value):
    with pytest.raises(LatentfuseError, match="window must be 0 .* or a multiple of 16 of at least 32"):
        check_window(value)
    assert check_window(0) == 0 and check_window(128) == 128


def test_bad_images_are_clear_errors():
    with pytest.raises(LatentfuseError, match="dtype uint8"):
        upscale(np.zeros((4, 4, 3), np.uint8), 2)
    with pytest.raises(LatentfuseError, match="shape"):
        upscale(np.zeros((2, 4, 4, 3), np.float32), 2)
    with pytest.raises(LatentfuseError, match="5x3 image does not divide by the factor 2"):
        downscale(np.zeros((3, 5), np.float32), 2)


def test_a_model_directory_keeps_its_working_scale(tmp_path):
    from latentfuse.model.components import INDEX_NAME, FusionComponents

    comps = FusionComponents.from_preset("tiny", heads=("regression",), seed=0)
    comps.save_pretrained(tmp_path / "plain")
    assert "work_scale" not in json.loads((tmp_path / "plain" / INDEX_NAME).read_text())  # 1: the old layout
    assert FusionComponents.from_pretrained(tmp_path / "plain").work_scale == 1
    comps.work_scale, comps.window = 2, 128
    comps.save_pretrained(tmp_path / "x2")
    loaded = FusionComponents.from_pretrained(tmp_path / "x2")
    assert (loaded.work_scale, loaded.window) == (2, 128)

    index = tmp_path / "x2" / INDEX_NAME
    index.write_text(json.dumps({**json.loads(index.read_text()), "work_scale": 9}))
    with pytest.raises(LatentfuseError, match=r"model_index.json: work_scale must be an integer from 1 to 4, got 9"):
        FusionComponents.from_pretrained(tmp_path / "x2")
