import numpy as np
import pytest

from latentfuse.model.data import depth as DP
from latentfuse.model.data.pipeline import degrade_pair
from latentfuse.model.errors import LatentfuseError


def test_prior_puts_the_top_of_a_uniform_scene_far(make_image):
    d = DP.depth_prior(make_image(96, 128))
    assert d.shape == (96, 128) and d.min() == 0.0 and d.max() == pytest.approx(1.0)
    assert d[:24].mean() > d[-24:].mean() + 0.3


def test_prior_treats_blurred_regions_as_farther():
    from scipy import ndimage

    tex = np.random.default_rng(0).random((96, 96))
    img = tex.copy()
    img[:, 48:] = ndimage.gaussian_filter(tex, 4)[:, 48:]  # right half defocused
    d = DP.depth_prior(img)
    assert d[:, 56:].mean() > d[:, :40].mean()


def test_plug_in_estimator_is_normalised_resized_and_used_by_haze(make_image):
    img = make_image(64, 96)
    calls = []

    def fake(x):  # a "model" returning a small left-to-right depth ramp (1 = far on the right)
        calls.append(x.shape)
        return np.tile(np.linspace(5.0, 50.0, 24), (16, 1))

    d = DP.estimate_depth(img, fake)
    assert d.shape == (64, 96) and d.min() == 0.0 and d.max() == pytest.approx(1.0)
    assert d[:, -10:].mean() > 0.9 and d[:, :10].mean() < 0.1
    s = degrade_pair(img, img[..., 0], None, "mef", np.random.default_rng(0), degradations=["haze"],
                     crop=False, depth_estimator=fake)
    assert calls[-1][:2] == (64, 96)
    lost = np.abs(s.a - s.clean_a)
    assert lost[:, -16:].mean() > lost[:, :16].mean()  # far side hazier


def test_bad_estimator_outputs_and_missing_model_dir(make_image, tmp_path):
    img = make_image(32, 32)
    with pytest.raises(LatentfuseError, match="HxW"):
        DP.estimate_depth(img, lambda x: np.zeros((2, 3, 4)))
    with pytest.raises(LatentfuseError, match="NaN"):
        DP.estimate_depth(img, lambda x: np.full((32, 32), np.nan))
    with pytest.raises(LatentfuseError, match="not found"):
        DP.load_depth_estimator(tmp_path / "no_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentfuseError, match="config.json"):
        DP.TransformersDepth(tmp_path / "empty")
    assert DP.load_depth_estimator(None) is None


def test_transformers_depth_runs_a_local_depth_anything_checkpoint(tmp_path):
    """The real plug-in path on a tiny, randomly initialised Depth-Anything saved to disk (no download)."""
    transformers = pytest.importorskip("transformers")
    bb = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=64, image_size=56, patch_size=14,
                                   out_features=["stage1", "stage2", "stage3", "stage4"],
                                   reshape_hidden_states=False)
    cfg = transformers.DepthAnythingConfig(backbone_config=bb, neck_hidden_sizes=[8, 16, 32, 32],
                                           fusion_hidden_size=16, head_hidden_size=8,
                                           reassemble_hidden_size=32, patch_size=14)
    transformers.DepthAnythingForDepthEstimation(cfg).save_pretrained(tmp_path)
    transformers.DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False,
                                   ensure_multiple_of=14).save_pretrained(tmp_path)
    estimator = DP.load_depth_estimator(tmp_path)
    img = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    depth = DP.estimate_depth(img, estimator)
    assert depth.shape == (40, 60) and np.isfinite(depth).all()
    assert depth.min() == 0.0 and depth.max() == pytest.approx(1.0)
