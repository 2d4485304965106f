"""The detail path as a pipeline stage: where it runs, which parameters a prompt picks, what a model carries."""

from __future__ import annotations

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings, restore_detail

SETTINGS = DetailSettings.for_configs(DetailConfig(sigma=3.0, radius=2, fused_candidate=False),
                                      DetailConfig(sigma=1.5, radius=1))


@pytest.fixture(scope="module")
def pipe():
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    components = FusionComponents.from_preset("tiny", seed=0)
    components.detail = SETTINGS
    return Pipeline.from_components(components)


def _pair(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((h, w, 3), dtype=np.float32), rng.random((h, w, 3), dtype=np.float32)


def test_the_stage_runs_on_the_decoded_image_at_input_size(pipe):
    a, b = _pair()
    off = pipe(a, b, task="mef", mode="regression", detail="off")
    on = pipe(a, b, task="mef", mode="regression", detail="clean")
    assert off.info["detail"] == "off" and off.timings.stages["Detail"] == 0.0
    assert on.info["detail"] == SETTINGS.clean.as_dict() and on.timings.stages["Detail"] > 0.0
    np.testing.assert_allclose(on.image, restore_detail(off.image, a, b, SETTINGS.clean), atol=1e-6)
    assert np.abs(on.image - off.image).max() > 0.05  # the sources' detail went in


@pytest.mark.parametrize("prompt,expected", [
    (None, "clean"),                                   # the task's canonical prompt
    ("  Fuse the MULTI-exposure images ", "clean"),
    ("merge the exposure bracket into one well-exposed image", "clean"),  # another phrasing of a task prompt
    ("fuse the infrared and visible images", "clean"),  # any task's prompt: the mode does not look at the task
    ("remove the grain from the images", "safe"),      # "grain" is not rain
    ("brighten the dark image", "safe"),
    ("remove the rain and the noise", "off"),          # the stage copies rain back
    ("desnow the images", "off"),
    ("destripe the infrared image", "off"),
])
def test_auto_picks_the_parameters_from_the_prompt(pipe, prompt, expected):
    a, b = _pair(32, 32)
    result = pipe(a, b, task="mef", mode="regression", prompt=prompt)
    want = "off" if expected == "off" else getattr(SETTINGS, expected).as_dict()
    assert result.info["detail"] == want


def test_gray_pair_stays_gray_and_unknown_mode_is_refused(pipe):
    rng = np.random.default_rng(3)
    a, b = rng.random((36, 44), dtype=np.float32), rng.random((36, 44), dtype=np.float32)
    result = pipe(a, b, task="mff", mode="regression")
    assert result.image.shape == (36, 44) and result.info["detail"] == SETTINGS.clean.as_dict()
    with pytest.raises(LatentfuseError, match="unknown detail mode 'sharp'"):
        pipe(a, b, task="mff", mode="regression", detail="sharp")


def test_a_model_without_a_detail_path_runs_none():
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    plain = Pipeline.from_components(FusionComponents.from_preset("tiny", seed=0))
    a, b = _pair(32, 32)
    assert plain.detail is None
    assert plain(a, b, task="vif", mode="regression", detail="clean").info["detail"] == "off"


def test_the_model_directory_keeps_the_settings(tmp_path):
    import json

    from latentfuse.model.components import FusionComponents

    components = FusionComponents.from_preset("tiny", seed=0)
    components.detail = SETTINGS
    components.save_pretrained(tmp_path / "m")
    assert FusionComponents.from_pretrained(tmp_path / "m").detail == SETTINGS
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    index["detail"] = {"clean": {"sigma": 2.0}}
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(LatentfuseError, match="model_index.json: detail: needs 'clean' and 'safe'"):
        FusionComponents.from_pretrained(tmp_path / "m")
    index["detail"] = {**SETTINGS.to_dict(), "clean": {"sigma": -1.0}}
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(LatentfuseError, match="detail sigma must be positive"):
        FusionComponents.from_pretrained(tmp_path / "m")


def test_the_cli_offers_exactly_the_detail_modes():
    from latentfuse.model.image_processing.detail import DETAIL_MODES
    from latentfuse.runtime.fuse_cli import DETAIL_CHOICES

    assert DETAIL_CHOICES == ("auto", *DETAIL_MODES)

