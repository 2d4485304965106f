import numpy as np
import pytest

from latentfuse.model.data import pipeline as PL
from latentfuse.model.data.prompts import prompts_for
from latentfuse.model.data.tasks import task_degradations
from latentfuse.model.errors import LatentfuseError


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def triple(make_image):
    a = make_image(120, 160, seed=1)
    b = make_image(120, 160, seed=2, rgb=False)
    gt = make_image(120, 160, seed=3)
    return a, b, gt


def _ratio(h, w):
    return max(h, w) / min(h, w)


def test_gt_is_only_cropped_never_degraded(triple):
    a, b, gt = triple
    for seed in range(6):
        s = PL.degrade_pair(a, b, gt, "vif", rng(seed), n=3)
        c = s.crop
        expected = gt[c["top"]:c["top"] + c["height"], c["left"]:c["left"] + c["width"]]
        np.testing.assert_array_equal(s.gt, expected)
        np.testing.assert_array_equal(s.clean_a, a[c["top"]:c["top"] + c["height"], c["left"]:c["left"] + c["width"]])
        assert s.a.shape == s.gt.shape and s.b.shape[:2] == s.gt.shape[:2]


def test_gt_resized_alongside_when_long_side_given(triple):
    from skimage.transform import resize

    a, b, gt = triple
    s = PL.degrade_pair(a, b, gt, "mff", rng(4), n=2, long_side=64)
    assert max(s.gt.shape[:2]) == 64 and all(d % 16 == 0 for d in s.gt.shape[:2])
    c = s.crop
    crop = gt[c["top"]:c["top"] + c["height"], c["left"]:c["left"] + c["width"]]
    expected = resize(crop, s.gt.shape, order=1, anti_aliasing=True, mode="reflect")
    np.testing.assert_allclose(s.gt, expected, atol=1e-6)


def test_crops_use_the_paper_aspect_ratios_in_both_orientations(triple):
    a, b, gt = triple
    ratios, portrait = set(), False
    for seed in range(40):
        box = PL.random_crop_box(a.shape[:2], rng(seed))
        assert box["top"] + box["height"] <= a.shape[0] and box["left"] + box["width"] <= a.shape[1]
        r = _ratio(box["height"], box["width"])
        ratios.add(min((16 / 9, 4 / 3, 1.0), key=lambda x: abs(x - r)))
        assert min(abs(r - x) for x in (16 / 9, 4 / 3, 1.0)) < 0.05
        portrait |= box["height"] > box["width"]
    assert ratios == {16 / 9, 4 / 3, 1.0} and portrait


def test_n_degradations_and_task_sets(triple):
    counts = set()
    for task in ("vif", "mef", "mff"):
        for seed in range(30):
            chosen = PL.choose_degradations(task, rng(seed))
            counts.add(len(chosen))
            assert len(set(chosen)) == len(chosen)
            assert set(chosen) <= set(task_degradations(task))
            assert not {"low_exposure", "high_exposure"} <= set(chosen)
            assert chosen == sorted(chosen, key=PL.APPLY_ORDER.index)
    assert counts == {1, 2, 3}
    assert "ir_strips" not in task_degradations("mef") and "high_exposure" in task_degradations("mff")


def test_vif_routing_follows_the_paper(triple):
    a, b, _ = triple
    s = PL.degrade_pair(a, b, None, "vif", rng(), degradations=["low_exposure"], crop=False)
    assert np.array_equal(s.b, s.clean_b) and s.a.mean() < s.clean_a.mean()
    s = PL.degrade_pair(a, b, None, "vif", rng(), degradations=["ir_strips"], crop=False)
    assert np.array_equal(s.a, s.clean_a) and not np.array_equal(s.b, s.clean_b)
    s = PL.degrade_pair(a, b, None, "vif", rng(), degradations=["rain"], crop=False)
    assert s.a.mean() > s.clean_a.mean()  # weather on the visible image
    assert np.abs(np.diff(s.b, axis=1)).mean() < np.abs(np.diff(s.clean_b, axis=1)).mean()  # IR blurred
    assert "ir_blur_sigma" in s.params["rain"]
    s = PL.degrade_pair(a, b, None, "mef", rng(), degradations=["noise"], crop=False)
    assert not np.array_equal(s.a, s.clean_a) and not np.array_equal(s.b, s.clean_b)
    assert not np.array_equal(s.a - s.clean_a, s.b[..., None] - s.clean_b[..., None])  # independent noise


def test_prompt_matches_the_chosen_degradations(triple):
    a, b, gt = triple
    for seed in range(5):
        s = PL.degrade_pair(a, b, gt, "mff", rng(seed))
        assert s.prompt in prompts_for(s.degradations)
    clean = PL.degrade_pair(a, b, gt, "vif", rng(), n=0)
    assert clean.degradations == [] and clean.prompt in prompts_for([], "vif")


def test_pipeline_is_deterministic_under_a_seed(triple):
    a, b, gt = triple
    s1 = PL.degrade_pair(a, b, gt, "vif", rng(11), n=3, long_side=96)
    s2 = PL.degrade_pair(a, b, gt, "vif", rng(11), n=3, long_side=96)
    s3 = PL.degrade_pair(a, b, gt, "vif", rng(12), n=3, long_side=96)
    assert s1.degradations == s2.degradations and s1.prompt == s2.prompt and s1.crop == s2.crop
    assert np.array_equal(s1.a, s2.a) and np.array_equal(s1.b, s2.b)
    assert not (s1.crop == s3.crop and np.array_equal(s1.a, s3.a))


def test_bad_inputs_raise(triple, make_image):
    a, b, gt = triple
    with pytest.raises(LatentfuseError, match="differ in size"):
        PL.degrade_pair(a, make_image(100, 160), None, "vif", rng())
    with pytest.raises(LatentfuseError, match="not used for task mef"):
        PL.degrade_pair(a, b, None, "mef", rng(), degradations=["ir_strips"])
    with pytest.raises(LatentfuseError, match="unknown fusion task"):
        PL.degrade_pair(a, b, None, "pet", rng())
