import numpy as np
import pytest

from latentfuse.model.data import selection as S
from latentfuse.model.data.labels import pseudo_label
from latentfuse.model.data.refiner import decompose, refine
from latentfuse.model.data.synth import exposure_pair, focus_pair, thermal_rendering
from latentfuse.model.data.teachers import get_teacher


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture
def pairs(make_image):
    img = make_image(96, 96, seed=7)
    under, over, _ = exposure_pair(img, rng(1))
    near, far, _ = focus_pair(img, rng(2))
    thermal, _ = thermal_rendering(img, rng(3))
    return {"vif": (img, thermal), "mef": (under, over), "mff": (near, far)}


@pytest.mark.parametrize("task", ["vif", "mef", "mff"])
def test_selection_picks_the_good_candidate_over_a_bad_one(task, pairs):
    from scipy import ndimage

    a, b = pairs[task]
    good = get_teacher("mertens" if task == "mef" else "gff")(a, b)
    bad = ndimage.gaussian_filter(get_teacher("average")(a, b), (3, 3, 0))  # smeared, no detail
    for cands in ({"bad": bad, "good": good}, {"good": good, "bad": bad}):  # order does not matter
        sel = S.select_label(a, b, cands, task)
        assert sel.name == "good"
        assert sel.scores["good"] > sel.scores["bad"] and 0 < sel.scores["bad"] < 1
        assert set(sel.criteria["good"]) == set(S.TASK_WEIGHTS[task])


def test_score_is_one_only_when_best_on_every_criterion():
    raw = {"x": {"qabf": 0.6, "vif": 0.5, "mi": 2.0}, "y": {"qabf": 0.3, "vif": 0.25, "mi": 1.0}}
    scores = S.score_candidates(raw, "vif")
    assert scores["x"] == pytest.approx(1.0) and scores["y"] == pytest.approx(0.5)


def test_unmeasurable_criterion_is_dropped_for_small_images(make_image):
    a, b = make_image(48, 48, seed=1), make_image(48, 48, seed=2, rgb=False)
    sel = S.select_label(a, b, {"avg": get_teacher("average")(a, b), "gff": get_teacher("gff")(a, b)}, "vif")
    assert np.isnan(sel.criteria["avg"]["vif"]) and max(sel.scores.values()) <= 1.0 + 1e-9


def test_refiner_raises_contrast_and_detail_of_a_low_contrast_label(pairs):
    a, b = pairs["mff"]
    label = get_teacher("focus")(a, b)
    flat = (0.5 + 0.35 * (label - label.mean())).astype(np.float32)  # washed-out label
    out = refine(flat, a, b)
    assert {"clahe_amount", "detail_gain"} <= set(out.applied)
    base0, det0 = decompose(flat.mean(-1))
    base1, det1 = decompose(out.image.mean(-1))
    assert base1.std() > 1.3 * base0.std()
    assert det1.std() > 1.3 * det0.std()


def test_refiner_corrects_exposure_and_leaves_a_good_label_alone(pairs):
    a, b = pairs["mff"]
    good = get_teacher("focus")(a, b)
    untouched = refine(good, a, b)
    assert untouched.applied == {} and np.array_equal(untouched.image, good)
    dark = (0.3 * good).astype(np.float32)
    fixed = refine(dark, a, b)
    assert "gamma" in fixed.applied and fixed.image.mean() > dark.mean() + 0.1


def test_pseudo_label_runs_the_whole_chain(pairs):
    a, b = pairs["mef"]
    label = pseudo_label(a, b, "mef")
    assert label.teacher in label.scores and label.image.shape == a.shape
    summary = label.summary()
    assert summary["teacher"] == label.teacher and set(summary["scores"]) == set(label.scores)
