import numpy as np
import pytest

from latentfuse.model.data.pairs import discover_pairs, load_pair, validate_pairs
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import write_image


def img(h=24, w=32, seed=0, rgb=True):
    x = np.random.default_rng(seed).random((h, w, 3) if rgb else (h, w))
    return x.astype(np.float32)


def put(path, h=24, w=32, rgb=True, suffix=".png"):
    write_image(path.with_suffix(suffix), img(h, w, rgb=rgb))


def test_llvip_layout_with_splits(tmp_path):
    for split in ("train", "test"):
        for name in ("010001", "010002"):
            put(tmp_path / "visible" / split / name, suffix=".jpg")
            put(tmp_path / "infrared" / split / name, rgb=True, suffix=".jpg")
    ps = validate_pairs(discover_pairs(tmp_path, "vif"))
    assert len(ps.pairs) == 4 and "visible/ + infrared/" in ps.layout
    assert {p.name for p in ps.pairs} == {"train__010001", "train__010002", "test__010001", "test__010002"}
    a, b, gt = load_pair(ps.pairs[0], "vif")
    assert a.ndim == 3 and b.ndim == 2 and gt is None  # IR reduced to one channel


@pytest.mark.parametrize("va,ir", [("vi", "ir"), ("Vis", "Ir")])
def test_msrs_and_m3fd_layouts(tmp_path, va, ir):
    for split in ("train", "test"):
        put(tmp_path / split / va / "00001D")
        put(tmp_path / split / ir / "00001D", rgb=False)
    ps = validate_pairs(discover_pairs(tmp_path, "vif"))
    assert sorted(p.name for p in ps.pairs) == ["test__00001D", "train__00001D"]


def test_sice_scene_folders_pick_darkest_and_brightest(tmp_path):
    for scene in ("1", "2"):
        for k in (1, 2, 3, 10):
            put(tmp_path / scene / str(k), suffix=".JPG")
    put(tmp_path / "Label" / "1", suffix=".JPG")
    ps = validate_pairs(discover_pairs(tmp_path, "mef"))
    assert ps.layout == "SICE scene folders" and len(ps.pairs) == 2
    first = ps.pairs[0]
    assert first.a.name == "1.JPG" and first.b.name == "10.JPG" and first.gt.name == "1.JPG"
    assert ps.pairs[1].gt is None


def test_suffix_pairs_lytro_and_mefb(tmp_path):
    for k in (1, 2):
        put(tmp_path / "lytro" / f"lytro-0{k}-A", suffix=".jpg")
        put(tmp_path / "lytro" / f"lytro-0{k}-B", suffix=".jpg")
    ps = validate_pairs(discover_pairs(tmp_path, "mff"))
    assert sorted(p.name for p in ps.pairs) == ["lytro__lytro-01", "lytro__lytro-02"]
    assert ps.pairs[0].a.name.endswith("-A.jpg")


def test_realmff_folders_with_ground_truth(tmp_path):
    for name in ("001", "002"):
        put(tmp_path / "imageA" / name)
        put(tmp_path / "imageB" / name)
        put(tmp_path / "Fusion" / name)
    ps = validate_pairs(discover_pairs(tmp_path, "mff"))
    assert all(p.gt is not None for p in ps.pairs)


def test_missing_partner_is_listed(tmp_path):
    put(tmp_path / "vi" / "a1")
    put(tmp_path / "ir" / "a1")
    put(tmp_path / "vi" / "a2")
    put(tmp_path / "ir" / "b9")
    with pytest.raises(LatentfuseError) as err:
        validate_pairs(discover_pairs(tmp_path, "vif"))
    msg = str(err.value)
    assert "2 problem(s)" in msg and "missing partner" in msg
    assert "a2.png" in msg and "b9.png" in msg


def test_size_mismatch_and_unreadable_files_are_listed(tmp_path):
    put(tmp_path / "under" / "s1")
    put(tmp_path / "over" / "s1", h=20)
    put(tmp_path / "under" / "s2")
    (tmp_path / "over" / "s2.png").write_bytes(b"\x89PNG garbage")
    put(tmp_path / "under" / "s3")
    put(tmp_path / "over" / "s3")
    with pytest.raises(LatentfuseError) as err:
        validate_pairs(discover_pairs(tmp_path, "mef"))
    msg = str(err.value)
    assert "size mismatch" in msg and "32x24" in msg and "32x20" in msg and "over/s1.png" in msg
    assert "unreadable" in msg and "over/s2.png" in msg
    assert "s3" not in msg


def test_unknown_layout_and_missing_folder(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(LatentfuseError, match="no vif image pairs found"):
        discover_pairs(tmp_path, "vif")
    with pytest.raises(LatentfuseError, match="not found"):
        discover_pairs(tmp_path / "nope", "vif")
