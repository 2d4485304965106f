"""bench.user_pair: one camera-size pair end to end through the runtime, per backend and head."""

from __future__ import annotations

import json

import pytest

from latentfuse.model.errors import LatentfuseError


def test_parse_size_is_width_by_height_with_clear_errors():
    from latentfuse.bench.user_pair import parse_size

    assert parse_size("640x480") == (480, 640)
    with pytest.raises(LatentfuseError, match="WIDTHxHEIGHT"):
        parse_size("640")
    with pytest.raises(LatentfuseError, match="at least 16x16"):
        parse_size("8x8")


def test_parse_sizes_lists_each_size_once_smallest_first():
    from latentfuse.bench.user_pair import parse_sizes

    assert parse_sizes("4000x3000, 640x480,640x480") == [(480, 640), (3000, 4000)]
    with pytest.raises(LatentfuseError, match="WIDTHxHEIGHT"):
        parse_sizes(",")


def test_user_pair_rows_time_every_stage_and_are_written(tmp_path):
    from latentfuse.bench.user_pair import run_user_pair, sample_pair, write_user_pair
    from latentfuse.model.components import FusionComponents

    model_dir = FusionComponents.from_preset("tiny", seed=0).save_pretrained(tmp_path / "model")
    a, b = sample_pair((48, 64))
    assert a.shape == (48, 64, 3) and b.shape[:2] == (48, 64)
    rows = run_user_pair(model_dir, backends=("torch",), modes=("regression", "flow"), size=(48, 64),
                         warmup=0, repeat=2, progress=False)
    assert [(r.backend, r.mode) for r in rows] == [("torch", "regression"), ("torch", "flow")]
    assert rows[0].summary.runs == 2 and rows[0].summary.nfe == 1 and rows[1].summary.nfe == 5
    assert all(r.summary.median[s] > 0 for r in rows for s in ("VAE-Enc", "DiT", "VAE-Dec", "total"))
    assert all(r.peak_rss > 50 * 2 ** 20 for r in rows)  # the process's resident set, read per call on Linux
    text = write_user_pair(rows, tmp_path / "out", (48, 64), str(model_dir))
    assert "64x48 pair" in text and "| torch | flow |" in text and "peak RSS" in text
    saved = json.loads((tmp_path / "out" / "user_pair.json").read_text())
    assert saved["size"] == {"height": 48, "width": 64} and len(saved["rows"]) == 2
    assert saved["rows"][0]["peak_rss_bytes"] == rows[0].peak_rss and saved["rows"][0]["s_per_megapixel"] > 0


def test_user_pair_sizes_share_the_rounds_and_compare_per_megapixel(tmp_path):
    from latentfuse.bench.user_pair import run_user_pair, write_user_pair
    from latentfuse.model.components import FusionComponents

    model_dir = FusionComponents.from_preset("tiny", seed=0).save_pretrained(tmp_path / "model")
    rows = run_user_pair(model_dir, backends=("torch",), modes=("regression",), sizes=[(64, 96), (32, 48)],
                         warmup=1, repeat=1, progress=False)
    assert [r.size for r in rows] == [(32, 48), (64, 96)]  # smallest first
    text = write_user_pair(rows, tmp_path / "out", (32, 48), str(model_dir))
    assert "Pairs of 48x32, 96x64" in text and "| 96x64 | torch | regression |" in text
    assert "x) |" in text  # the larger size's time per megapixel against the smallest's
