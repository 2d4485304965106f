import argparse
import json
import shutil

import numpy as np
import pytest

from latentfuse.model.data import cli as data_cli
from latentfuse.model.data.build import build_dataset
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import read_image


def run(argv):
    parser = argparse.ArgumentParser(prog="latentfuse")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "vif"
    assert run(["data", "synth", "--task", "vif", "--out", str(out), "-n", "2", "--size", "64", "--seed", "3"]) == 0
    return out


def test_synth_writes_pairs_gt_and_metadata(synth_dir):
    meta = json.loads((synth_dir / "synth.json").read_text())
    assert meta["task"] == "vif" and meta["n"] == 2 and meta["gt"] == "teachers"
    for rec in meta["pairs"]:
        a = read_image(synth_dir / "a" / f"{rec['name']}.png")
        b = read_image(synth_dir / "b" / f"{rec['name']}.png")
        gt = read_image(synth_dir / "gt" / f"{rec['name']}.png")
        assert a.ndim == 3 and b.ndim == 2 and a.shape == gt.shape and max(a.shape[:2]) == 64
        assert rec["label"]["teacher"] in rec["label"]["scores"]


@pytest.mark.parametrize("task", ["mef", "mff"])
def test_synth_other_tasks_and_source_gt(tmp_path, task):
    out = tmp_path / task
    run(["data", "synth", "--task", task, "--out", str(out), "-n", "1", "--size", "48", "--gt", "source"])
    name = json.loads((out / "synth.json").read_text())["pairs"][0]["name"]
    a, b = read_image(out / "a" / f"{name}.png"), read_image(out / "b" / f"{name}.png")
    assert a.shape == b.shape
    np.testing.assert_array_equal(read_image(out / "gt" / f"{name}.png"), read_image(out / "source" / f"{name}.png"))
    if task == "mef":
        assert a.mean() < b.mean() - 0.1  # under- vs over-exposed


def test_synth_refuses_to_overwrite(synth_dir):
    with pytest.raises(FileExistsError):
        run(["data", "synth", "--task", "vif", "--out", str(synth_dir), "-n", "1", "--size", "48"])


def test_build_writes_tuples_and_index(synth_dir, tmp_path):
    out = tmp_path / "ds"
    assert run(["data", "build", "--task", "vif", "--src", str(synth_dir), "--out", str(out),
                "--per-pair", "2", "--size", "48", "--seed", "5"]) == 0
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(records) == 4 and [r["id"] for r in records] == sorted(r["id"] for r in records)
    for r in records:
        assert 1 <= len(r["degradations"]) <= 3 and r["prompt"]
        imgs = {k: read_image(out / v) for k, v in r["files"].items()}
        assert imgs["a"].shape == imgs["gt"].shape == imgs["clean_a"].shape
        assert imgs["b"].shape == imgs["clean_b"].shape == imgs["a"].shape[:2]
        assert max(imgs["a"].shape[:2]) == 48
        assert r["label"]["gt_source"] == "dataset"  # synth folder carries teacher GT


def test_build_is_resumable_and_deterministic(synth_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    kwargs = dict(per_pair=2, long_side=48, seed=1, progress=False)
    first = build_dataset(synth_dir, out, "vif", **kwargs)
    assert (first.built, first.skipped) == (4, 0)
    index = (out / "index.jsonl").read_text()
    victim = sorted((out / "samples").iterdir())[1]
    before = (victim / "a.png").read_bytes()
    shutil.rmtree(victim)
    again = build_dataset(synth_dir, out, "vif", **kwargs)
    assert (again.built, again.skipped) == (1, 3)
    assert (victim / "a.png").read_bytes() == before
    assert (out / "index.jsonl").read_text() == index
    assert build_dataset(synth_dir, out, "vif", **kwargs).built == 0
    with pytest.raises(LatentfuseError, match="different settings.*seed"):
        build_dataset(synth_dir, out, "vif", **{**kwargs, "seed": 2})


def test_folders_built_with_a_manifest_jsonl_still_read(synth_dir, tmp_path):
    """The sample index was called manifest.jsonl before: such folders are read as they are, and a rebuild
    writes index.jsonl in its place (one index per folder, never both)."""
    from latentfuse.model.training.data import find_indexes, read_index

    out = tmp_path / "tasks" / "vif"
    build_dataset(synth_dir, out, "vif", long_side=48, seed=1, progress=False)
    (out / "index.jsonl").rename(out / "manifest.jsonl")
    for root in (out, out.parent):
        assert find_indexes(root) == [out / "manifest.jsonl"] and len(read_index(out / "manifest.jsonl")) == 2
    assert build_dataset(synth_dir, out, "vif", long_side=48, seed=1, progress=False).built == 0
    assert find_indexes(out.parent) == [out / "index.jsonl"] and not (out / "manifest.jsonl").exists()
    with pytest.raises(LatentfuseError, match="holds no sample index"):
        find_indexes(tmp_path / "empty")


def test_build_labels_real_layout_with_teachers(tmp_path, make_image):
    from latentfuse.model.image_io import write_image

    src = tmp_path / "lytro"
    for k in (1, 2):
        sharp = make_image(64, 64, seed=k)
        write_image(src / f"lytro-0{k}-A.png", sharp)
        write_image(src / f"lytro-0{k}-B.png", np.clip(sharp * 0.9, 0, 1))
    out = tmp_path / "ds"
    report = build_dataset(src, out, "mff", n_degradations=[1], seed=0, teacher_names=["average", "focus"],
                           progress=False, split="all")  # lytro-01 is a held-out scene (model/data/split.py)
    assert report.built == 2
    rec = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert rec["label"]["gt_source"] == "teachers" and rec["label"]["teacher"] in ("average", "focus")
    assert (out / "labels" / f"{rec['pair']}.png").is_file()


def test_build_reports_bad_folders(tmp_path):
    with pytest.raises(LatentfuseError, match="no mef image pairs"):
        run(["data", "build", "--task", "mef", "--src", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(LatentfuseError, match="NAME=DIR"):
        run(["data", "build", "--task", "mef", "--src", str(tmp_path), "--out", str(tmp_path / "o"),
             "--teacher-dir", "oops"])


def test_registered_in_the_latentfuse_command():
    from latentfuse.runtime.cli import COMMAND_MODULES

    assert "latentfuse.model.data.cli" in COMMAND_MODULES
