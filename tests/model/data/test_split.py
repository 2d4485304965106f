"""The real datasets' layouts (``vif/<set>/{vi,ir}/NAME``, ``<task>/input/<scene>/<scene>_A|B.*``) and the
held-out split by scene name, on tiny generated fixtures (mixed jpg/png/bmp/tif, gray and RGB)."""

import argparse
import json

import numpy as np
import pytest

from latentfuse.model.data import cli as data_cli
from latentfuse.model.data.build import build_dataset
from latentfuse.model.data.pairs import discover_pairs, load_pair, validate_pairs
from latentfuse.model.data.split import HELDOUT_FRACTION, check_split, scene_name, select, split_of
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import write_image


def names_with(split: str, n: int, prefix: str) -> list[str]:
    """The first ``n`` names ``<prefix>NN`` whose scene falls in ``split`` (fixtures need both sides)."""
    out = [f"{prefix}{k:02d}" for k in range(200) if split_of(f"{prefix}{k:02d}") == split]
    return out[:n]


def picture(h, w, seed, rgb):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.2 * np.sin(2 * np.pi * (3 + seed % 3) * xx) * np.cos(2 * np.pi * 2 * yy)
    base = np.clip(base + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
    if not rgb:
        return base
    return np.stack([base, np.clip(0.9 * base + 0.05, 0, 1), np.clip(1.1 * base - 0.05, 0, 1)], -1)


def gray_as_rgb(x):
    return np.repeat(x[..., None], 3, -1)


@pytest.fixture
def vif_root(tmp_path):
    """``vif/RoadScene/{vi,ir}`` (vi RGB jpg, ir gray png) and ``vif/TNO/{vi,ir}`` (both gray stored as
    RGB: bmp and tif)."""
    root = tmp_path / "vif"
    names = names_with("train", 2, "FLIR_0") + names_with("heldout", 1, "FLIR_0")
    for k, name in enumerate(names):
        write_image(root / "RoadScene" / "vi" / f"{name}.jpg", picture(40, 56, k, rgb=True))
        write_image(root / "RoadScene" / "ir" / f"{name}.png", picture(40, 56, k + 9, rgb=False))
    for k, name in enumerate(names_with("train", 1, "") + names_with("heldout", 1, "")):
        write_image(root / "TNO" / "vi" / f"{name}.bmp", gray_as_rgb(picture(48, 48, k, rgb=False)))
        write_image(root / "TNO" / "ir" / f"{name}.tif", gray_as_rgb(picture(48, 48, k + 5, rgb=False)))
    return root


@pytest.fixture
def scene_root(tmp_path):
    """``mff/input/<scene>/<scene>_A|B.*``: mixed suffixes, a gray scene, a gray/RGB mix, MEFB's case
    quirks (``Farmhouse_A`` + ``FarmHouse_B``, ``sKY_a`` + ``Sky_B``)."""
    root = tmp_path / "mff" / "input"
    train, held = names_with("train", 3, "scene"), names_with("heldout", 2, "scene")
    specs = [(train[0], "jpg", "JPG", True, True), (train[1], "bmp", "bmp", False, False),
             (train[2], "tif", "png", False, True), (held[0], "png", "png", True, True),
             (held[1], "tif", "tif", False, False)]
    for k, (scene, sa, sb, rgb_a, rgb_b) in enumerate(specs):
        write_image(root / scene / f"{scene}_A.{sa}", picture(40, 48, k, rgb_a))
        write_image(root / scene / f"{scene}_B.{sb}", picture(40, 48, k + 3, rgb_b))
    write_image(root / "Farmhouse" / "Farmhouse_A.png", picture(40, 48, 7, True))
    write_image(root / "Farmhouse" / "FarmHouse_B.png", picture(40, 48, 8, True))
    write_image(root / "Sky" / "sKY_a.png", picture(40, 48, 9, True))
    write_image(root / "Sky" / "Sky_B.png", picture(40, 48, 10, True))
    return root.parent


def test_vif_sets_under_one_root_mixed_formats(vif_root):
    ps = validate_pairs(discover_pairs(vif_root, "vif"))
    assert ps.layout == "folders vi/ + ir/" and len(ps.pairs) == 5
    assert {p.name.split("__")[0] for p in ps.pairs} == {"RoadScene", "TNO"}
    for pair in ps.pairs:
        a, b, gt = load_pair(pair, "vif")
        assert a.ndim == 3 and b.ndim == 2 and a.shape[:2] == b.shape and gt is None  # IR reduced to gray
        assert a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


def test_scene_folders_mixed_formats_gray_and_rgb(scene_root):
    for root in (scene_root, scene_root / "input"):  # the task root or its input/ folder
        ps = validate_pairs(discover_pairs(root, "mff"))
        assert ps.layout.startswith("scene folders") and len(ps.pairs) == 7
        assert "Farmhouse" in {p.name for p in ps.pairs} and "Sky" in {p.name for p in ps.pairs}
    pairs = {p.name: p for p in ps.pairs}
    assert pairs["Sky"].a.name == "sKY_a.png" and pairs["Farmhouse"].b.name == "FarmHouse_B.png"
    shapes = set()
    for pair in ps.pairs:
        a, b, _ = load_pair(pair, "mff")
        assert a.shape == b.shape  # a gray partner of an RGB image is replicated
        shapes.add(a.ndim)
    assert shapes == {2, 3}  # gray scenes stay gray
    mef = validate_pairs(discover_pairs(scene_root, "mef"))
    assert len(mef.pairs) == 7


def test_scene_folder_without_partner_is_named(scene_root):
    (scene_root / "input" / "Sky" / "Sky_B.png").unlink()
    with pytest.raises(LatentfuseError, match=r"(?s)1 problem.*Sky.*sKY_a.png.*no \*_B image"):
        validate_pairs(discover_pairs(scene_root, "mef"))


def test_split_is_deterministic_disjoint_and_covers_every_scene():
    names = [f"scene_{k:03d}" for k in range(400)]
    train, held = select(names, "train", name=str), select(names, "heldout", name=str)
    assert not set(train) & set(held) and sorted(train + held) == sorted(names)
    assert select(names, "all", name=str) == names
    assert [split_of(n) for n in names] == [split_of(n) for n in names]
    share = len(held) / len(names)
    assert abs(share - HELDOUT_FRACTION) < 0.06  # ~20 %, independently per scene
    # one scene, one side: set prefix, folders and case do not matter
    assert scene_name("RoadScene__FLIR_00211") == "flir_00211"
    for name in names[:50]:
        assert split_of(name) == split_of(f"TNO__{name}") == split_of(f"a__b__{name.upper()}")
    with pytest.raises(LatentfuseError, match="unknown split 'test'"):
        check_split("test")


def test_split_does_not_depend_on_the_root(vif_root):
    whole = {p.name.split("__")[-1]: split_of(p.name) for p in discover_pairs(vif_root, "vif").pairs}
    for sub in ("RoadScene", "TNO"):
        for pair in discover_pairs(vif_root / sub, "vif").pairs:
            assert split_of(pair.name) == whole[pair.name.split("__")[-1]]


def run(argv):
    parser = argparse.ArgumentParser(prog="latentfuse")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _records(out):
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def test_build_writes_train_scenes_unless_asked(scene_root, tmp_path):
    common = ["--task", "mff", "--src", str(scene_root), "--n-degradations", "1", "--teachers", "average",
              "laplacian", "--no-crop"]
    out = tmp_path / "train"
    assert run(["data", "build", *common, "--out", str(out)]) == 0
    train = _records(out)
    assert train and {r["split"] for r in train} == {"train"}
    held_out = tmp_path / "heldout"
    assert run(["data", "build", *common, "--out", str(held_out), "--split", "heldout"]) == 0
    held = _records(held_out)
    assert held and {r["split"] for r in held} == {"heldout"}
    assert not {r["pair"] for r in train} & {r["pair"] for r in held}
    everything = build_dataset(scene_root, tmp_path / "all", "mff", n_degradations=[1], crop=False,
                               teacher_names=["average"], progress=False, split="all")
    assert everything.total == len(train) + len(held) == 7
    assert json.loads((out / "build.json").read_text())["split"] == "train"
    with pytest.raises(LatentfuseError, match="different settings.*split"):
        build_dataset(scene_root, out, "mff", n_degradations=[1], crop=False,
                      teacher_names=["average", "laplacian"], progress=False, split="all")


def test_training_loader_refuses_heldout_scenes(vif_root, tmp_path):
    from latentfuse.model.training.data import read_index, read_training_index

    out = tmp_path / "heldout"
    build_dataset(vif_root, out, "vif", n_degradations=[1], crop=False, teacher_names=["average"],
                  progress=False, split="heldout")
    assert read_index(out / "index.jsonl")  # evaluation reads it
    with pytest.raises(LatentfuseError, match="held-out scene"):
        read_training_index(out / "index.jsonl")
    train = tmp_path / "train"
    build_dataset(vif_root, train, "vif", n_degradations=[1], crop=False, teacher_names=["average"], progress=False)
    assert len(read_training_index(train / "index.jsonl")) == 3


def test_synthetic_folders_are_not_split(tmp_path):
    synth = tmp_path / "synth"
    run(["data", "synth", "--task", "mff", "--out", str(synth), "-n", "2", "--size", "48", "--gt", "source"])
    out = tmp_path / "ds"
    report = build_dataset(synth, out, "mff", n_degradations=[1], progress=False)
    assert report.total == 2 and "split" not in json.loads((out / "build.json").read_text())
    assert all("split" not in r for r in _records(out))
    with pytest.raises(LatentfuseError, match="synthetic pairs.*--split heldout"):
        build_dataset(synth, tmp_path / "x", "mff", progress=False, split="heldout")
