import itertools

import numpy as np
import pytest

from latentfuse.model.data import prompts as P
from latentfuse.model.data.tasks import DEGRADATIONS, TASKS, task_degradations
from latentfuse.model.errors import LatentfuseError


def test_every_degradation_has_10_to_20_distinct_prompts():
    assert set(P.SINGLE_PROMPTS) == set(DEGRADATIONS)
    for name, texts in P.SINGLE_PROMPTS.items():
        assert 10 <= len(set(texts)) == len(texts) <= 20, name


def test_corpus_is_sorted_deduplicated_stable_and_complete():
    corpus = P.corpus()
    assert corpus == sorted(set(corpus))
    assert corpus == P.corpus()
    words = set(corpus)
    for texts in list(P.SINGLE_PROMPTS.values()) + list(P.TASK_PROMPTS.values()):
        assert set(texts) <= words
    for key, text in P.canonical_prompts().items():
        assert text in words, key
    for task in TASKS:
        for combo in itertools.combinations(task_degradations(task), 2):
            assert set(P.prompts_for(combo)) <= words


def test_composite_prompt_reads_naturally():
    texts = P.composite_prompts(["rain", "noise"])
    assert texts[0] == "remove the noise and the rain"
    assert all("rain" in t and ("noise" in t or "grain" in t) for t in texts)
    three = P.composite_prompts(["haze", "low_contrast", "jpeg"])
    assert three[0] == "remove the JPEG artifacts and the haze, and enhance the contrast"
    only_corrections = P.composite_prompts(["low_exposure", "low_contrast"])[0]
    assert only_corrections == "brighten the dark image and enhance the contrast"


def test_order_of_degradations_does_not_change_prompts():
    assert P.composite_prompts(["snow", "motion_blur"]) == P.composite_prompts(["motion_blur", "snow"])


def test_canonical_prompts_cover_tasks_and_degradations():
    canon = P.canonical_prompts()
    assert canon["vif"] == "fuse the infrared and visible images"
    assert set(canon) == set(TASKS) | set(DEGRADATIONS)
    assert P.canonical_prompt([], "mef") == canon["mef"]
    assert P.canonical_prompt(["noise"]) == canon["noise"]


def test_sample_prompt_is_seeded_and_valid():
    a = [P.sample_prompt(["rain", "noise"], np.random.default_rng(3)) for _ in range(3)]
    assert len(set(a)) == 1 and a[0] in P.prompts_for(["rain", "noise"])
    assert P.sample_prompt([], np.random.default_rng(0), task="mff") in P.TASK_PROMPTS["mff"]


@pytest.mark.parametrize("bad", [["fog_of_war"], ["noise", "noise"], ["noise", "rain", "snow", "haze"]])
def test_bad_degradation_lists_raise(bad):
    with pytest.raises(LatentfuseError):
        P.prompts_for(bad)


def test_clean_prompt_needs_a_task():
    with pytest.raises(LatentfuseError, match="task"):
        P.prompts_for([])
