"""`latentfuse evaluate` (bench.quality): layouts, controls, baselines, determinism, resume, bad input.

A tiny random-weight model with a detail stage and 48x64 images keep each run to seconds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from latentfuse.bench import quality
from latentfuse.model.image_io import write_image
from latentfuse.runtime.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings

    components = FusionComponents.from_preset("tiny", seed=0)
    components.detail = DetailSettings.for_configs(DetailConfig(channels="rgb"), DetailConfig(gain=0.5))
    path = tmp_path_factory.mktemp("quality") / "tiny_model"
    components.save_pretrained(path)
    return path


def _scene(seed: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A smooth scene with edges (Q^AB/F needs gradients) and a gray partner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(6 * x + seed) * np.cos(5 * y)
    a = np.clip(np.stack([base, base * 0.9, 1 - base], -1) + 0.02 * rng.standard_normal((h, w, 3)), 0, 1)
    b = np.clip((x > 0.4 + 0.05 * seed) * 0.7 + 0.2 * y, 0, 1)
    return a.astype(np.float32), b.astype(np.float32)


def plain_ab(root, names=("s0", "s1", "s2"), gray_b=True):
    for k, name in enumerate(names):
        a, b = _scene(k)
        write_image(root / "A" / f"{name}.png", a)
        write_image(root / "B" / f"{name}.jpg" if k % 2 else root / "B" / f"{name}.png",
                    b if gray_b else np.repeat(b[..., None], 3, -1))
    return root


def _run(*extra, checkpoint, data, out, task="vif"):
    return main(["evaluate", "--task", task, "--data", str(data), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--threads", "1", "--no-progress", *map(str, extra)])


# ------------------------------------------------------------------------------------------- layouts


def test_every_layout_is_found(tmp_path):
    a, b = _scene(0)
    write_image(tmp_path / "road/vi/FLIR_1.png", a)  # RoadScene / TNO
    write_image(tmp_path / "road/ir/FLIR_1.png", b)
    for scene in ("Arno", "Cave"):  # MEFB / MFIFB scene folders
        write_image(tmp_path / f"mefb/input/{scene}/{scene}_A.jpg", a)
        write_image(tmp_path / f"mefb/input/{scene}/{scene}_B.png", a * 0.5)
    write_image(tmp_path / "lytro/lytro-01-A.png", a)  # suffix pairs
    write_image(tmp_path / "lytro/lytro-01-B.png", a)
    plain_ab(tmp_path / "plain")
    assert [p.name for p in quality.find_pairs(tmp_path / "road", "vif")] == ["FLIR_1"]
    assert [p.name for p in quality.find_pairs(tmp_path / "mefb", "mef")] == ["Arno", "Cave"]
    assert [p.name for p in quality.find_pairs(tmp_path / "lytro", "mff")] == ["lytro-01"]
    for task in ("vif", "mef", "mff"):
        assert [p.name for p in quality.find_pairs(tmp_path / "plain", task)] == ["s0", "s1", "s2"]
    # a folder holding <task>/ folders is looked into; --n spreads evenly
    plain_ab(tmp_path / "tree" / "vif", names=[f"p{k}" for k in range(5)])
    assert [p.name for p in quality.find_pairs(tmp_path / "tree", "vif", n=3)] == ["p0", "p2", "p4"]


def test_heldout_split_is_the_projects():
    from latentfuse.model.data.split import is_heldout

    names = [f"scene{k}" for k in range(40)]
    held = [n for n in names if is_heldout(n)]
    assert 0 < len(held) < len(names)
    pairs = [type("P", (), {"name": n})() for n in names]
    from latentfuse.model.data.split import select

    assert [p.name for p in select(pairs, "heldout")] == held


# ------------------------------------------------------------------------------------------- statistics


def test_a_constant_has_a_zero_width_interval_and_a_spread_does_not():
    lo, hi = quality.bootstrap_ci([0.4321] * 17)
    assert lo == hi == pytest.approx(0.4321)
    lo, hi = quality.bootstrap_ci(np.linspace(0, 1, 17))
    assert lo < 0.5 < hi


def test_summary_shares_and_paired_differences():
    rows = [{"methods": {"average": {"qabf": q, "ssim_ref": 0.5, "psnr_ref": 20.0, "seconds": 0.0},
                         "average_detail": {"qabf": q + 0.1, "ssim_ref": 0.5, "psnr_ref": 20.0, "seconds": 0.0},
                         "m": {"qabf": q + d, "ssim_ref": 0.6, "psnr_ref": 21.0, "seconds": 1.0}}}
            for q, d in [(0.2, 0.05), (0.3, 0.2), (0.4, 0.15), (0.5, -0.1)]]
    s = quality.summarize(rows, ["average", "average_detail", "m"], quality.BASE_METRICS)
    assert s["m"]["above_average"] == 0.75 and s["m"]["above_average_detail"] == 0.5
    assert s["m"]["vs_average"]["qabf"]["mean"] == pytest.approx(0.075)
    assert s["m"]["vs_average_detail"]["psnr_ref"]["ci95"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert s["average"]["qabf"]["mean"] == pytest.approx(0.35)


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("clean_run")
    data = plain_ab(root / "data")
    out = root / "out"
    assert _run("--protocol", "both", "--seeds", "2", "--figures", "2", checkpoint=checkpoint, data=data, out=out) == 0
    return data, out, json.loads((out / "report.json").read_text())


def test_report_follows_the_schema(clean_run):
    data, out, report = clean_run
    vif = report["tasks"]["vif"]
    assert vif["clean"]["n"] == 3 and vif["degraded"]["n"] == 6
    assert list(vif["clean"]["methods"]) == ["regression", "flow", "regression_no_detail", "average", "average_detail"]
    assert list(vif["degraded"]["methods"])[-1] == "classical"
    for protocol in ("clean", "degraded"):
        for name, m in vif[protocol]["methods"].items():
            for metric in ("qabf", "ssim_ref", "psnr_ref", "seconds"):
                assert set(m[metric]) >= {"mean", "ci95"} and len(m[metric]["ci95"]) == 2
            assert 0.0 <= m["above_average"] <= 1.0 and 0.0 <= m["above_average_detail"] <= 1.0
        for pair in vif[protocol]["pairs"]:
            assert set(pair) >= {"scene", "seed", "degradations", "methods"}
            assert set(pair["methods"]["regression"]) >= {"qabf", "ssim_ref", "psnr_ref"}
    degraded = vif["degraded"]
    assert all(1 <= len(p["degradations"]) <= 2 for p in degraded["pairs"])
    for family, entry in degraded["families"].items():
        assert entry["n"] == sum(family in p["degradations"] for p in degraded["pairs"])
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| regression |")]
    assert len(rows) == 2  # one method table per protocol
    assert (out / "figures" / "vif_clean.jpg").is_file() and (out / "figures" / "vif_degraded.jpg").is_file()


def test_average_row_is_the_metric_of_the_averaged_image(clean_run):
    from latentfuse.model.data.labels import pseudo_label

    data, out, report = clean_run
    for pair in report["tasks"]["vif"]["clean"]["pairs"]:
        from latentfuse.model.data.pairs import ImagePair, load_pair

        stem = pair["scene"]
        b_file = next((data / "B").glob(f"{stem}.*"))
        a, b, _ = load_pair(ImagePair(stem, data / "A" / f"{stem}.png", b_file), "vif")
        label = quality.rgb(pseudo_label(a, b, "vif").image)
        expected = quality.score(a, b, 0.5 * (a + np.repeat(b[..., None], 3, -1)), label)
        got = pair["methods"]["average"]
        assert {k: got[k] for k in expected} == expected


def test_same_arguments_give_the_same_report(clean_run, checkpoint, tmp_path):
    data, out, report = clean_run
    assert _run("--protocol", "both", "--seeds", "2", "--figures", "2", checkpoint=checkpoint, data=data,
                out=tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())

    def strip(x):  # wall-clock seconds and the output folder are the only things allowed to differ
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "out")}
        return [strip(v) for v in x] if isinstance(x, list) else x

    assert strip(again) == strip(report)


def test_resume_skips_cached_pairs(clean_run, checkpoint, monkeypatch):
    data, out, report = clean_run
    calls = []
    real = quality.Evaluator.run
    monkeypatch.setattr(quality.Evaluator, "run", lambda self, item, *a, **k: calls.append(item) or real(self, item, *a, **k))
    assert _run("--protocol", "both", "--seeds", "2", "--figures", "2", checkpoint=checkpoint, data=data, out=out) == 0
    assert calls == []
    assert json.loads((out / "report.json").read_text()) == report
    # one cached pair gone: only it is measured again
    next((out / "cache" / "vif" / "clean").glob("s1_s0.json")).unlink()
    assert _run("--protocol", "both", "--seeds", "2", "--figures", "2", checkpoint=checkpoint, data=data, out=out) == 0
    assert [(c.protocol, c.pair.name) for c in calls] == [("clean", "s1")]


def test_a_baseline_equal_to_the_average_scores_like_the_average(clean_run, checkpoint, tmp_path, capsys):
    import tifffile

    from latentfuse.model.data.pairs import ImagePair, load_pair

    data, out, _ = clean_run
    folder = tmp_path / "avg"
    folder.mkdir()
    for stem in ("s0", "s1"):  # s2 left out: one warning, left out of the row
        b_file = next((data / "B").glob(f"{stem}.*"))
        a, b, _ = load_pair(ImagePair(stem, data / "A" / f"{stem}.png", b_file), "vif")
        tifffile.imwrite(folder / f"{stem}.tif", quality.average(a, b).astype(np.float32), photometric="rgb")  # float: exact
    assert _run("--methods", "average", "--baseline", f"mine={folder}", checkpoint=checkpoint, data=data,
                out=tmp_path / "out") == 0
    assert "baseline mine: 1 vif scene(s) missing, left out of its row: s2" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]["vif"]["clean"]
    for pair in report["pairs"]:
        if pair["scene"] == "s2":
            assert "mine" not in pair["methods"]
        else:
            mine, avg = dict(pair["methods"]["mine"]), dict(pair["methods"]["average"])
            assert {k: mine[k] for k in quality.BASE_METRICS} == {k: avg[k] for k in quality.BASE_METRICS}
    assert report["methods"]["mine"]["n"] == 2
    assert report["methods"]["mine"]["vs_average"]["qabf"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 2}


def test_max_side_shrinks_both_sources(checkpoint, tmp_path):
    data = plain_ab(tmp_path / "data", names=("s0",))
    assert _run("--methods", "average", "--max-side", "32", "--figures", "1", checkpoint=checkpoint, data=data,
                out=tmp_path / "out") == 0
    from latentfuse.model.image_io import read_image

    panel = read_image(next((tmp_path / "out" / "cache").rglob("average.png")))
    assert panel.shape[:2] == (24, 32)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--methods", "regression,sharpest"], "unknown method(s) sharpest"),
    (["--metrics", "qabf,nope"], "--metrics"),
    (["--n", "0"], "--n must be at least 1"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--degradations", "1-x"], "--degradations"),
])
def test_bad_arguments_are_one_line_errors(args, message, checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    assert _run(*args, checkpoint=checkpoint, data=data, out=tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_no_pairs_says_which_layouts_and_where(checkpoint, tmp_path, capsys):
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    assert _run(checkpoint=checkpoint, data=tmp_path / "empty", out=tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no vif image pairs found in" in err and str(tmp_path / "empty") in err and "vi/+ir/" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_sizes_that_differ_are_named_and_resize_fixes_them(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    write_image(data / "B" / "s0.png", np.zeros((40, 64), np.float32))
    assert _run("--methods", "average", checkpoint=checkpoint, data=data, out=tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "size mismatch" in err and "s0.png" in err and "--resize" in err
    assert _run("--methods", "average", "--resize", checkpoint=checkpoint, data=data, out=tmp_path / "out") == 0


def test_a_baseline_with_no_matching_scene_is_an_error(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    write_image(tmp_path / "other" / "unrelated.png", np.zeros((48, 64), np.float32))
    assert _run("--baseline", f"x={tmp_path / 'other'}", checkpoint=checkpoint, data=data,
                out=tmp_path / "out") == 2
    assert "no image named after any of the 1 vif scenes" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_is_an_error(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(checkpoint=checkpoint, data=data, out=locked / "out") == 2
        assert "cannot write there" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_an_out_file_is_an_error(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    (tmp_path / "file").write_text("x")
    assert _run(checkpoint=checkpoint, data=data, out=tmp_path / "file") == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_resume_with_other_settings_is_refused(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    assert _run("--methods", "average", checkpoint=checkpoint, data=data, out=tmp_path / "out") == 0
    assert _run("--methods", "average", "--max-side", "32", checkpoint=checkpoint, data=data,
                out=tmp_path / "out") == 2
    assert "other settings (max_side: None -> 32)" in capsys.readouterr().err


def test_the_flow_row_takes_a_sampler_and_steps_and_they_key_the_cache(checkpoint, tmp_path, capsys):
    data = plain_ab(tmp_path / "data", names=("s0",))
    assert _run("--methods", "flow", "--flow-sampler", "euler", "--flow-steps", "2", checkpoint=checkpoint, data=data,
                out=tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["flow_sampler"] == "euler" and report["settings"]["flow_steps"] == 2
    capsys.readouterr()
    assert _run("--methods", "flow", checkpoint=checkpoint, data=data, out=tmp_path / "out") == 2  # other settings
    assert "flow_sampler: 'euler' -> None" in capsys.readouterr().err
    assert _run("--methods", "flow", "--flow-sampler", "heun", checkpoint=checkpoint, data=data,
                out=tmp_path / "other") == 2
    assert "unknown sampler 'heun'" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert _run("--methods", "flow", "--flow-sampler", "euler", "--flow-steps", "2", "--flow-start", "0",
                checkpoint=checkpoint, data=data, out=tmp_path / "out") == 2  # a start keys the cache too
    assert "flow_start: None -> 0.0" in capsys.readouterr().err
    assert _run("--methods", "flow", "--flow-start", "1", checkpoint=checkpoint, data=data,
                out=tmp_path / "other") == 2
    assert "--flow-start must be a number in [0, 1)" in capsys.readouterr().err and not (tmp_path / "other").exists()
