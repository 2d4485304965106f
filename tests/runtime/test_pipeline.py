"""The fuse pipeline: pre-processing, sizes, prompts, NFE, errors, and the latency table.

End-to-end tests run the tiny preset (random weights) on the torch backend at small odd sizes;
torch vs ONNX Runtime parity lives in test_backends.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.latency import STAGES, StageTimes, format_table, summarize
from latentfuse.runtime.pipeline import PAD_MULTIPLE, load_image, match_pair, pad_to_multiple


# ------------------------------------------------------------------ pre-processing (no model)


@pytest.mark.parametrize("h,w", [(53, 75), (16, 16), (217, 300), (1, 40)])
def test_reflect_padding_reaches_a_multiple_of_16_and_keeps_the_image(h, w):
    img = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    padded, size = pad_to_multiple(img)
    assert size == (h, w)
    assert padded.shape[0] % PAD_MULTIPLE == 0 and padded.shape[1] % PAD_MULTIPLE == 0
    assert padded.shape[0] - h < PAD_MULTIPLE and padded.shape[1] - w < PAD_MULTIPLE
    np.testing.assert_array_equal(padded[:h, :w], img)
    if h > 1 and padded.shape[0] > h:  # reflection, not zeros: row h mirrors row h-2
        np.testing.assert_array_equal(padded[h, :w], img[h - 2])


def test_load_image_accepts_uint8_uint16_and_float_arrays():
    u8 = np.full((4, 5), 255, np.uint8)
    u16 = np.full((4, 5, 3), 65535, np.uint16)
    assert load_image(u8).dtype == np.float32 and load_image(u8).max() == 1.0
    assert load_image(u16).shape == (4, 5, 3) and load_image(u16).max() == 1.0
    assert load_image(np.zeros((4, 5, 1), np.float32)).shape == (4, 5)
    with pytest.raises(LatentfuseError, match=r"span \[2, 2\]"):
        load_image(np.full((4, 5), 2.0, np.float32))
    with pytest.raises(LatentfuseError, match="shape"):
        load_image(np.zeros((6, 5, 5), np.float32))  # 5 channels (2 would be gray + alpha)


def test_mismatched_sizes_are_a_clear_error_unless_resize():
    a, b = np.zeros((20, 30), np.float32), np.ones((22, 33, 3), np.float32)
    with pytest.raises(LatentfuseError) as err:
        match_pair(a, b, names=("vis.png", "ir.png"))
    msg = str(err.value)
    assert "30x20" in msg and "33x22" in msg and "vis.png" in msg and "--resize" in msg
    a2, b2 = match_pair(a, b, resize=True)
    assert b2.shape == (20, 30, 3) and np.allclose(b2, 1.0)


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(LatentfuseError, match="broken.png"):
        load_image(bad)
    with pytest.raises(LatentfuseError, match="not found"):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------ latency table


def _times(enc, t5, dit, dec, nfe):
    st = StageTimes(stages={"VAE-Enc": enc, "T5": t5, "DiT": dit, "VAE-Dec": dec}, total=enc + t5 + dit + dec + 0.001,
                    nfe=nfe)
    return st


def test_latency_table_has_every_stage_and_the_median():
    runs = [_times(0.010, 0.002, 0.050, 0.020, 5), _times(0.012, 0.002, 0.040, 0.020, 5),
            _times(0.100, 0.002, 0.045, 0.020, 5)]
    summary = summarize(runs, "onnxruntime flow")
    assert summary.median["VAE-Enc"] == pytest.approx(0.012)
    assert summary.median["DiT"] == pytest.approx(0.045)
    table = format_table([summary, summarize(runs[:1], "torch flow")])
    for name in ("VAE-Enc", "T5", "DiT x 5", "VAE-Dec", "Pipeline", "Images/s", "onnxruntime flow", "torch flow"):
        assert name in table
    assert "12.00 ms" in table and "45.00 ms" in table
    assert set(STAGES) == {"VAE-Enc", "T5", "DiT", "VAE-Dec", "Fidelity", "Detail"}


def test_latency_table_marks_a_cached_prompt():
    hit = _times(0.01, 0.0, 0.1, 0.01, 5)
    hit.cache_hit = True
    assert "(cached)" in format_table(summarize([hit, hit]))
    assert "(cached)" not in format_table(summarize([hit, _times(0.01, 0.002, 0.1, 0.01, 5)]))


def test_latency_table_with_mixed_nfe_shows_nfe_per_column():
    table = format_table([summarize([_times(0.01, 0, 0.1, 0.01, 5)], "flow"),
                          summarize([_times(0.01, 0, 0.02, 0.01, 1)], "regression")])
    assert "DiT x NFE" in table and "(5)" in table and "(1)" in table


# ------------------------------------------------------------------ end to end on the torch backend


@pytest.fixture(scope="module")
def pipe():
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    return Pipeline.from_components(FusionComponents.from_preset("tiny", seed=0))


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_odd_size_comes_back_at_its_own_size_with_nfe_equal_to_steps(pipe):
    a, b = _rand((53, 75, 3)), _rand((53, 75), seed=1)
    result = pipe(a, b, task="vif", mode="flow", sampler="midpoint_reuse", steps=3, seed=7)
    assert result.image.shape == (53, 75, 3) and result.image.dtype == np.float32
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert result.nfe == 3 and result.sampler == "midpoint_reuse"
    assert set(result.timings.stages) == set(STAGES)
    assert result.timings.total >= sum(result.timings.stages.values())


def test_same_seed_same_image_other_seed_other_image(pipe):
    a, b = _rand((32, 48, 3)), _rand((32, 48, 3), seed=1)
    r1 = pipe(a, b, task="mef", mode="flow", steps=2, seed=3)
    r2 = pipe(a, b, task="mef", mode="flow", steps=2, seed=3)
    r3 = pipe(a, b, task="mef", mode="flow", steps=2, seed=4)
    np.testing.assert_array_equal(r1.image, r2.image)
    assert np.abs(r1.image - r3.image).max() > 1e-4
    assert r1.sampler == "midpoint_reuse_sde" and r1.nfe == 2  # the default sampler: Algorithm 1, 1 NFE/step
    source = pipe(a, b, task="mef", mode="flow", steps=2, seed=3, prior="source_mean")  # FusionFM-style source prior
    assert source.image.shape == r1.image.shape and np.abs(source.image - r1.image).max() > 1e-4


def test_a_pipeline_samples_from_the_prior_its_flow_dit_declares():
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    comps = FusionComponents.from_preset("tiny", heads=("flow",), seed=0)
    comps.dits["flow"].config = comps.dits["flow"].config.replace(prior="source_mean", prior_sigma=0.3)
    pipe = Pipeline.from_components(comps)
    assert (pipe.defaults["prior"], pipe.defaults["prior_sigma"]) == ("source_mean", 0.3)
    a, b = _rand((32, 48, 3)), _rand((32, 48, 3), seed=1)
    declared = pipe(a, b, task="mef", mode="flow", steps=2, seed=3)
    np.testing.assert_array_equal(declared.image, pipe(a, b, task="mef", mode="flow", steps=2, seed=3, prior="source_mean").image)
    assert np.abs(declared.image - pipe(a, b, task="mef", mode="flow", steps=2, seed=3, prior="gaussian").image).max() > 1e-4


def test_a_flow_start_refines_the_regression_estimate(pipe, monkeypatch):
    """start t0 > 0: one regression call, then the steps over [t0, 1] from its estimate noised to t0; start 0
    is the paper's sampler; regression mode refuses it, and a model without the regression DiT cannot start."""
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    a, b = _rand((32, 48, 3)), _rand((32, 48, 3), seed=1)
    calls = []
    regress = pipe.backend.regress
    monkeypatch.setattr(pipe.backend, "regress", lambda *args: calls.append(1) or regress(*args))
    started = pipe(a, b, task="vif", mode="flow", steps=2, seed=3, start=0.5)
    assert started.nfe == 3 and len(calls) == 1 and started.info["start"] == 0.5
    plain = pipe(a, b, task="vif", mode="flow", steps=2, seed=3, start=0.0)
    assert plain.nfe == 2 and len(calls) == 1 and np.abs(started.image - plain.image).max() > 1e-4
    np.testing.assert_array_equal(plain.image, pipe(a, b, task="vif", mode="flow", steps=2, seed=3).image)
    with pytest.raises(LatentfuseError, match="--mode regression .* takes no --start 0.5"):
        pipe(a, b, task="vif", mode="regression", start=0.5)
    with pytest.raises(LatentfuseError, match=r"--start must be a number in \[0, 1\)"):
        pipe(a, b, task="vif", mode="flow", start=1.0)
    flow_only = Pipeline.from_components(FusionComponents.from_preset("tiny", heads=("flow",), seed=0))
    with pytest.raises(LatentfuseError, match="regression"):
        flow_only(a, b, task="vif", mode="flow", steps=2, start=0.5)


def test_a_model_declares_its_flow_start_and_steps(tmp_path):
    """model_index.json "sampler" sets the flow's start and steps for every runtime (the bundle's manifest too);
    a bad one is a one-line error naming the file."""
    import json

    from latentfuse.model.components import INDEX_NAME, FusionComponents, read_index
    from latentfuse.runtime.model_info import ModelInfo

    comps = FusionComponents.from_preset("tiny", seed=0)
    comps.sampler = {"start": 0.3, "steps": 3}
    folder = comps.save_pretrained(tmp_path / "model")
    assert json.loads((folder / INDEX_NAME).read_text())["sampler"] == {"start": 0.3, "steps": 3}
    info = ModelInfo.from_model_index(folder)
    assert info.sampler_defaults["start"] == 0.3 and info.sampler_defaults["steps"] == 3
    assert ModelInfo.from_model_index(FusionComponents.from_pretrained(folder)).sampler_defaults == info.sampler_defaults
    index = json.loads((folder / INDEX_NAME).read_text())
    for bad, message in (({"start": 1.5}, r"sampler start must be a number in \[0, 1\)"),
                         ({"steps": 0}, "sampler steps must be an integer >= 1"),
                         ({"begin": 0.3}, "sampler: unknown key.*begin")):
        (folder / INDEX_NAME).write_text(json.dumps({**index, "sampler": bad}))
        with pytest.raises(LatentfuseError, match=f"{INDEX_NAME}: {message}"):
            read_index(folder)
    del index["dit_regression"]
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(LatentfuseError, match="needs both DiTs"):
        read_index(folder)


def test_tiny_images_are_padded_up_and_cropped_back(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "min_size", 64)  # e.g. a TensorRT profile minimum of 64 px
    result = pipe(_rand((8, 21, 3)), _rand((8, 21)), task="vif", mode="regression")
    assert result.image.shape == (8, 21, 3)


def test_regression_mode_is_one_call_at_300x217(pipe):
    result = pipe(_rand((217, 300, 3)), _rand((217, 300, 3), seed=2), task="mff", mode="regression")
    assert result.image.shape == (217, 300, 3) and result.nfe == 1 and result.sampler == "regression"


def test_16bit_png_and_gray_inputs(pipe, tmp_path):
    from latentfuse.model.image_io import write_image

    write_image(tmp_path / "a16.png", _rand((40, 56)), bit_depth=16)   # 16-bit gray (e.g. thermal)
    write_image(tmp_path / "b16.png", _rand((40, 56), seed=5), bit_depth=16)
    gray = pipe(tmp_path / "a16.png", tmp_path / "b16.png", task="mef", mode="regression")
    assert gray.image.shape == (40, 56)  # both inputs gray -> a gray result
    write_image(tmp_path / "rgb.tif", _rand((40, 56, 3)), bit_depth=16)
    mixed = pipe(tmp_path / "rgb.tif", tmp_path / "a16.png", task="vif", mode="regression")
    assert mixed.image.shape == (40, 56, 3)
    path = mixed.save(tmp_path / "out16.png", bit_depth=16)
    assert np.abs(read_back(path) - mixed.image).max() < 1e-4


def read_back(path):
    from latentfuse.model.image_io import read_image

    return read_image(path)


def test_prompts_are_encoded_once_and_default_to_the_task_prompt(pipe):
    from latentfuse.model.data.prompts import CANONICAL_TASK_PROMPTS

    a, b = _rand((16, 16, 3)), _rand((16, 16, 3), seed=1)
    calls = pipe.text_encoder_calls
    first = pipe(a, b, task="mff", mode="regression", prompt="remove the  rain")
    again = pipe(a, b, task="mff", mode="regression", prompt="remove the rain ")  # same words: same prompt
    assert pipe.text_encoder_calls == calls + 1
    assert not first.timings.cache_hit and again.timings.cache_hit
    assert pipe(a, b, task="mff", mode="regression").prompt == CANONICAL_TASK_PROMPTS["mff"]
    # with memoisation off (benchmarking) only canonical prompts stay cached, as in a bundle
    pipe.memoize_prompts = False
    try:
        calls = pipe.text_encoder_calls
        for _ in range(2):
            pipe.encode_prompt("please remove the snow of the image pairs")  # canonical (snow)
            pipe.encode_prompt("remove the snow, thank you")                  # free text
        assert pipe.text_encoder_calls == calls + 3
    finally:
        pipe.memoize_prompts = True


def test_bundle_prompt_cache_is_hit_without_the_text_encoder(pipe):
    from latentfuse.runtime.pipeline import Pipeline

    embeds, mask = pipe.backend.encode_prompts(["fuse the multi-focus images"])
    cached = Pipeline(pipe.backend, prompt_cache={"fuse the multi-focus images": (embeds, mask)})
    result = cached(_rand((16, 16, 3)), _rand((16, 16, 3)), task="mff", mode="regression")
    assert cached.text_encoder_calls == 0 and result.timings.cache_hit


def test_clear_errors_for_bad_calls(pipe, monkeypatch):
    a = _rand((32, 32, 3))
    with pytest.raises(LatentfuseError, match="unknown sampler 'heun'"):
        pipe(a, a, task="vif", mode="flow", sampler="heun")
    with pytest.raises(LatentfuseError, match="unknown mode"):
        pipe(a, a, task="vif", mode="diffusion")
    with pytest.raises(LatentfuseError, match="unknown fusion task"):
        pipe(a, a, task="medical")
    with pytest.raises(LatentfuseError, match=r"--tile needs at least 32 px, got 8"):
        pipe(a, a, task="vif", tile=8)


def test_benchmark_gives_a_table_with_every_stage(pipe):
    a, b = _rand((16, 32, 3)), _rand((16, 32, 3), seed=1)
    summary = pipe.benchmark(a, b, warmup=1, runs=2, task="vif", prompt="remove the noise", mode="flow", steps=2)
    assert summary.runs == 2 and summary.nfe == 2
    assert all(summary.median[s] > 0 for s in ("VAE-Enc", "T5", "DiT", "VAE-Dec", "total"))
    table = format_table(summary)
    assert "DiT x 2" in table and "T5" in table and "Images/s" in table


# ------------------------------------------------------------------ tiled processing


class _LocalBackend:
    """Every graph pointwise in space (encode = 8x8 mean pooling, decode = nearest upsampling,
    velocity / regression per latent pixel): tiling must then reproduce the untiled result exactly."""

    name, heads = "local", ("flow", "regression")
    low_memory = False

    def __init__(self, scale: int = 1, window: int = 0):
        self.shapes = []
        self.scale, self.size = scale, window

    @property
    def info(self):  # the model's metadata, which the pipeline takes beside the backend
        from latentfuse.runtime.model_info import ModelInfo

        return ModelInfo(heads=self.heads, work_scale=self.scale, window=self.size)

    def encode_images(self, x):
        self.shapes.append(x.shape[-2:])
        b, c, h, w = x.shape
        pooled = x.reshape(b, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
        return np.concatenate([pooled] * 5 + [pooled[:, :1]], axis=1)  # 16 channels

    def decode(self, z):
        self.shapes.append(tuple(8 * s for s in z.shape[-2:]))
        return np.repeat(np.repeat(z[:, :3], 8, axis=2), 8, axis=3)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        self.shapes.append(tuple(8 * s for s in z_t.shape[-2:]))
        return 0.5 * (z_a + z_b) - z_t * float(t[0])

    def regress(self, z_a, z_b, embeds, mask):
        self.shapes.append(tuple(8 * s for s in z_a.shape[-2:]))
        return np.maximum(z_a, z_b)

    def encode_prompts(self, prompts):
        return np.ones((1, 3, 4), np.float32), np.ones((1, 3), np.int64)

    def synchronize(self):
        pass

    def min_image_size(self):
        return None

    def max_image_size(self):
        return None

    def max_batch_size(self):
        return None

    def require_head(self, head):
        pass

    def describe(self):
        return "local"


def test_window_starts_cover_the_extent_on_the_grid():
    from latentfuse.runtime.backends.tiled import window_starts

    assert window_starts(40, 64, 16, 16) == [0]
    starts = window_starts(208, 64, 16, 16)
    assert starts[0] == 0 and starts[-1] == 208 - 64 and all(s % 16 == 0 for s in starts)
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))  # neighbours overlap >= 16


@pytest.mark.parametrize("mode", ["flow", "regression"])
def test_tiled_processing_equals_untiled_for_a_local_model(mode, monkeypatch):
    from latentfuse.runtime.pipeline import Pipeline

    a, b = _rand((100, 150, 3)), _rand((100, 150), seed=1)
    plain = Pipeline(_LocalBackend(), _LocalBackend().info)(a, b, task="vif", mode=mode, steps=3 if mode == "flow" else None)
    local = _LocalBackend()
    monkeypatch.setattr(local, "max_image_size", lambda: (64, 96))
    pipe = Pipeline(local, local.info)
    tiled = pipe(a, b, task="vif", mode=mode, steps=3 if mode == "flow" else None)  # over the limit: tiled without being asked
    assert tiled.info["tiled"] and tiled.image.shape == (100, 150, 3)
    assert max(s[0] for s in local.shapes) <= 64 and max(s[1] for s in local.shapes) <= 96
    assert len(local.shapes) > 3  # really split into windows
    np.testing.assert_allclose(tiled.image, plain.image, atol=1e-5)


def test_tiled_torch_pipeline_returns_the_full_size(pipe, monkeypatch):
    monkeypatch.setattr(pipe.backend, "max_image_size", lambda: (32, 48))
    result = pipe(_rand((40, 60, 3)), _rand((40, 60, 3), seed=1), task="mef", mode="regression")
    assert result.image.shape == (40, 60, 3) and result.info["tiled"]
    assert np.isfinite(result.image).all()


def test_working_scale_enlarges_the_pair_for_the_backend_and_shrinks_the_result_back(monkeypatch):
    from latentfuse.model.work_scale import downscale, upscale
    from latentfuse.runtime.pipeline import Pipeline, from_model_range, to_model_range

    a, b = _rand((40, 56, 3)), _rand((40, 56), seed=1)
    local = _LocalBackend(scale=2)
    result = Pipeline(local, local.info)(a, b, task="vif", mode="regression")
    assert result.image.shape == (40, 56, 3) and result.info["size"] == (40, 56)
    assert local.shapes[0] == (80, 112)  # the VAE encoder saw the pair at twice the size
    # the same steps by hand: enlarge, encode, fuse, decode, shrink
    x = to_model_range([upscale(a, 2), upscale(np.repeat(b[..., None], 3, -1), 2)])
    z = local.encode_images(x)
    expected = downscale(from_model_range(local.decode(local.regress(z[:1], z[1:], None, None)), (80, 112)), 2)
    np.testing.assert_allclose(result.image, expected, atol=1e-6)

    monkeypatch.setattr(local, "max_image_size", lambda: (64, 96))
    tiled = Pipeline(local, local.info)(a, b, task="vif", mode="regression")  # 112x80 once enlarged: over the limit
    assert tiled.image.shape == (40, 56, 3) and tiled.info["tiled"]


def test_torch_pipeline_runs_a_model_at_its_working_scale():
    from latentfuse.model.components import FusionComponents
    from latentfuse.runtime.pipeline import Pipeline

    comps = FusionComponents.from_preset("tiny", heads=("regression",), seed=0)
    comps.work_scale = 2
    pipe = Pipeline.from_components(comps)
    seen = []
    encode = pipe.backend.encode_images
    pipe.backend.encode_images = lambda x: seen.append(x.shape) or encode(x)
    result = pipe(_rand((24, 40, 3)), _rand((24, 40, 3), seed=1), task="mff", mode="regression")
    assert seen == [(2, 3, 48, 80)] and result.image.shape == (24, 40, 3)


def test_a_model_window_runs_larger_pairs_in_windows_of_that_size():
    from latentfuse.runtime.pipeline import Pipeline

    a, b = _rand((40, 56, 3)), _rand((40, 56), seed=1)
    plain = Pipeline(_LocalBackend(scale=2), _LocalBackend(scale=2).info)(a, b, task="vif", mode="flow", steps=2)
    local = _LocalBackend(scale=2, window=48)
    windowed = Pipeline(local, local.info)(a, b, task="vif", mode="flow", steps=2)  # no --tile needed: the model asks
    assert windowed.info["tiled"] and windowed.image.shape == (40, 56, 3)
    # the VAE once on the whole (enlarged) pair, the DiT in 48 px windows, all windows of a call as one batch
    assert local.shapes[0] == local.shapes[-1] == (80, 112)
    assert len(local.shapes) == 2 + 2 and max(max(s) for s in local.shapes[1:-1]) <= 48
    np.testing.assert_allclose(windowed.image, plain.image, atol=1e-5)  # a local model: windows change nothing
    small = _LocalBackend(scale=2, window=48)
    assert not Pipeline(small, small.info)(a[:24, :24], b[:24, :24], task="vif", mode="regression").info["tiled"]
