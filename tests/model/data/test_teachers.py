import numpy as np
import pytest
from scipy import ndimage

from latentfuse.model.data import teachers as T
from latentfuse.model.data.synth import exposure_pair
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_io import write_image
from latentfuse.model.image_processing import pyramid as P


def test_registry_has_at_least_three_real_teachers_per_task():
    for task in ("vif", "mef", "mff"):
        names = [t.name for t in T.teachers_for(task)]
        assert len([n for n in names if n != "average"]) >= 3, (task, names)
    with pytest.raises(LatentfuseError, match="unknown teacher"):
        T.get_teacher("swinfusion")
    with pytest.raises(LatentfuseError, match="already registered"):
        T.register_teacher(T.Teacher("gff", lambda a, b: a))


@pytest.mark.parametrize("name", ["average", "laplacian", "gff", "tif", "mertens", "focus"])
def test_teachers_fuse_gray_and_colour_pairs(name, make_image):
    rgb, gray = make_image(48, 64, seed=1), make_image(48, 64, seed=2, rgb=False)
    teacher = T.get_teacher(name)
    vif = teacher(rgb, gray)
    assert vif.shape == rgb.shape and vif.dtype == np.float32 and 0 <= vif.min() and vif.max() <= 1
    assert teacher(gray, gray[::-1].copy()).shape == gray.shape
    same = teacher(gray, gray)
    assert np.abs(same - gray).mean() < 0.03  # fusing an image with itself returns it


def test_laplacian_pyramid_reconstructs_exactly(make_image):
    img = make_image(45, 61)  # odd sizes
    pyr = P.laplacian_pyramid(img, P.max_levels(img.shape))
    assert len(pyr) >= 4
    np.testing.assert_allclose(P.collapse(pyr), img, atol=1e-10)


def _multifocus(make_image):
    sharp = make_image(64, 96, seed=4, rgb=False)
    sharp = sharp + 0.1 * np.random.default_rng(0).random(sharp.shape)
    blurred = ndimage.gaussian_filter(sharp, 3)
    a, b = sharp.copy(), sharp.copy()
    a[:, 48:] = blurred[:, 48:]  # a: left in focus
    b[:, :48] = blurred[:, :48]  # b: right in focus
    return sharp, a, b


@pytest.mark.parametrize("name", ["focus", "gff", "laplacian"])
def test_multifocus_teachers_recover_the_sharp_image(name, make_image):
    sharp, a, b = _multifocus(make_image)
    fused = T.get_teacher(name)(a, b)
    err = np.abs(fused - sharp)[4:-4, 4:-4].mean()
    assert err < 0.5 * min(np.abs(a - sharp).mean(), np.abs(b - sharp).mean()), name
    assert err < np.abs(T.get_teacher("average")(a, b) - sharp)[4:-4, 4:-4].mean()


def test_focus_decision_map_selects_the_focused_halves(make_image):
    _, a, b = _multifocus(make_image)
    w = T.focus_decision(a, b)
    assert w[:, 8:40].mean() > 0.9 and w[:, 56:88].mean() < 0.1


def test_mertens_is_better_exposed_than_either_shot(make_image):
    under, over, _ = exposure_pair(make_image(64, 64, seed=5), np.random.default_rng(0))
    fused = T.mertens(under.astype(np.float64), over.astype(np.float64))

    def badness(x):
        return np.abs(x.mean(-1) - 0.5).mean()

    assert badness(fused) < min(badness(under), badness(over))


def test_folder_teacher_reads_precomputed_outputs(tmp_path, make_image):
    rgb, gray = make_image(32, 40, seed=1), make_image(32, 40, seed=2, rgb=False)
    write_image(tmp_path / "pair_7.png", 0.5 * gray + 0.25)  # a gray (Y-only) network output
    teacher = T.FolderTeacher("mynet", tmp_path)
    out = teacher(rgb, gray, sample="pair_7")
    assert out.shape == rgb.shape  # recoloured with the visible chroma
    np.testing.assert_allclose(out @ np.array([0.299, 0.587, 0.114]), 0.5 * gray + 0.25, atol=0.01)
    with pytest.raises(LatentfuseError, match="no output for sample 'pair_8'"):
        teacher(rgb, gray, sample="pair_8")
    write_image(tmp_path / "small.png", gray[:16])
    with pytest.raises(LatentfuseError, match="small.png is 40x16"):
        teacher(rgb, gray, sample="small")
    with pytest.raises(LatentfuseError, match="folder not found"):
        T.FolderTeacher("x", tmp_path / "missing")
    names = [t.name for t in T.teachers_for("vif", extra=[teacher])]
    assert names[-1] == "mynet"
