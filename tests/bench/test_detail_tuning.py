"""bench.detail_tuning: the detail path's parameters chosen on training scenes, on tiny synthetic arrays."""

import numpy as np
import pytest

from latentfuse.bench import detail_tuning as dt
from latentfuse.model.errors import LatentfuseError

GRID = {"sigma": (2.0, 4.0), "radius": (1,), "fused_candidate": (True, False), "channels": ("luma",), "noise_k": (0.0,)}


def _pair(seed: int, h: int = 48, w: int = 64) -> dict:
    """A textured pair, its 'label' (the mean) and a blurred stand-in for the label's VAE round trip."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random((h, w)), 1.0)
    a = np.clip(np.stack([base, base ** 1.2, base ** 0.8], -1), 0, 1).astype(np.float32)
    b = np.clip(base + 0.1 * gaussian_filter(rng.random((h, w)), 0.7), 0, 1).astype(np.float32)
    label = 0.5 * (a + b[..., None])
    rt = gaussian_filter(label, (1.5, 1.5, 0)).astype(np.float32)
    return {"a": a, "b": b, "label": label.astype(np.float32), "rt_label": rt}


def test_tune_scores_every_configuration_and_the_clean_choice_beats_no_detail():
    sets = {"mff": [(f"scene{i}", _pair(i)) for i in range(2)]}
    result = dt.tune(sets, grid=GRID, variants=1)
    assert len(result["rows"]) == 4 and [r["mean"] for r in result["rows"]] == sorted(
        (r["mean"] for r in result["rows"]), reverse=True)
    row = result["rows"][0]
    assert set(row["qabf"]) == {"mff"} and np.isfinite(row["degraded_mean"])
    assert result["chosen"]["clean"] == row["config"]
    assert result["chosen"]["clean"]["sigma"] in GRID["sigma"]
    # putting the sources' detail back raises Q^AB/F of the blurred round trip
    assert row["qabf"]["mff"] > result["without_detail"]["mff"]
    assert result["train_pairs"] == {"mff": ["scene0", "scene1"]}


def test_choose_config_keeps_the_safe_rows_and_falls_back_to_the_least_costly():
    rows = [{"config": "sharp", "mean": 0.9, "degraded_mean": -1.0},
            {"config": "mild", "mean": 0.7, "degraded_mean": -0.05},
            {"config": "off", "mean": 0.5, "degraded_mean": 0.0}]
    assert dt.choose_config(rows, "clean")["config"] == "sharp"
    assert dt.choose_config(rows, "safe")["config"] == "mild"
    assert dt.choose_config(rows, "safe", max_loss_db=0.01)["config"] == "off"
    assert dt.choose_config(rows[:1], "safe")["config"] == "sharp"  # none within the bound: the least costly
    with pytest.raises(LatentfuseError, match="clean, safe"):
        dt.choose_config(rows, "loose")


def test_round_trip_pads_crops_and_rescales_like_the_pipeline():
    import torch

    class Identity:  # a VAE whose round trip is exact: what is left is padding, cropping and the working scale
        def encode(self, t):
            assert t.shape[-2] % 16 == 0 and t.shape[-1] % 16 == 0
            return t

        def decode(self, z):
            return z

    img = np.random.default_rng(0).random((21, 30)).astype(np.float32)  # gray, sizes not multiples of 16
    out = dt.round_trip(Identity(), img, scale=1)
    assert out.shape == (21, 30, 3) and np.allclose(out, img[..., None], atol=1e-6)
    assert dt.round_trip(Identity(), img, scale=2).shape == (21, 30, 3)
    del torch


def test_degraded_variants_are_seeded_by_the_pair_name():
    d = _pair(3, 96, 128)
    first = dt.degraded_variants("scene3", d, "mff", 2)
    again = dt.degraded_variants("scene3", d, "mff", 2)
    assert len(first) == 2 and all(len(names) == 1 for *_, names in first)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(first, again))
