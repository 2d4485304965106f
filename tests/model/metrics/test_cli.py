"""``latentfuse metrics`` end to end on small PNG files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import latentfuse.model.metrics as M
from latentfuse.runtime.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from _metrics_synthetic import synthetic, to_rgb  # noqa: E402


@pytest.fixture()
def files(tmp_path: Path) -> tuple[list[str], tuple[np.ndarray, ...]]:
    a, b, f = synthetic()
    f = to_rgb(f)
    paths = []
    for name, arr in (("a.png", a), ("b.png", b), ("f.png", f)):
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths, (a, b, f)


def test_json_matches_compute(files, capsys) -> None:
    (pa, pb, pf), (a, b, f) = files
    rc = main(["metrics", "--a", pa, "--b", pb, "--fused", pf, "--convention", "vifb", "--json", "--names", "qabf,ssim,en,sf"])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    expected = M.compute(a, b, f, names=["qabf", "ssim", "en", "sf"], convention="vifb")
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-12), k  # 8-bit files are read back exactly


def test_text_output_all_metrics(files, capsys) -> None:
    (pa, pb, pf), _ = files
    assert main(["metrics", "--a", pa, "--b", pb, "--fused", pf]) == 0
    out = capsys.readouterr().out
    assert "convention: corrected" in out
    assert all(f" {name} " in out or out.count(f"{name}  ") for name in M.DEFAULT_NAMES)


def test_errors_exit_2(files, capsys, tmp_path: Path) -> None:
    (pa, pb, pf), _ = files
    assert main(["metrics", "--a", pa, "--b", pb, "--fused", pf, "--names", "qabf,bogus"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["metrics", "--a", pa, "--b", str(tmp_path / "missing.png"), "--fused", pf]) == 2
    assert "missing.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "small.png")
    assert main(["metrics", "--a", pa, "--b", pb, "--fused", str(tmp_path / "small.png")]) == 2
    assert "differ in size" in capsys.readouterr().err
