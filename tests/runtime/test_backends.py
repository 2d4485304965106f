"""Backends: the registry, the shared interface, torch vs ONNX Runtime parity, and TensorRT where it imports."""

from __future__ import annotations

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError, MissingDependencyError
from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings
from latentfuse.runtime.backends import backend_names, check_backend_name, get_backend
from latentfuse.runtime.backends.base import Backend
from latentfuse.runtime.backends.tensorrt_backend import tensorrt_unavailable_reason


def test_registry_names_and_aliases():
    assert backend_names() == ("torch", "onnxruntime", "tensorrt")
    assert check_backend_name("ORT") == "onnxruntime"
    assert check_backend_name("trt") == "tensorrt"
    assert check_backend_name("PyTorch") == "torch"


def test_unknown_backend_lists_valid_names():
    with pytest.raises(LatentfuseError) as err:
        get_backend("tflite", bundle="x")
    msg = str(err.value)
    assert "tflite" in msg and "torch, onnxruntime, tensorrt" in msg and "\n" not in msg


def test_backend_source_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(LatentfuseError, match="--checkpoint DIR"):
        get_backend("torch", bundle=tmp_path)
    with pytest.raises(LatentfuseError, match="--bundle DIR"):
        get_backend("onnxruntime", checkpoint=tmp_path)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(LatentfuseError, match="not a deployment bundle"):
        get_backend("onnxruntime", bundle=tmp_path / "nope")


def test_missing_dependency_is_one_line_naming_the_install():
    err = MissingDependencyError("tensorrt", extra="trt", purpose="the tensorrt backend")
    assert "pip install 'latentfuse[trt]'" in str(err) and "\n" not in str(err)


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(LatentfuseError) as err:
        get_backend("tensorrt", bundle=tmp_path)
    assert "tensorrt" in str(err.value).lower()


def test_every_backend_implements_the_interface():
    from latentfuse.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from latentfuse.runtime.backends.tensorrt_backend import TensorRTBackend
    from latentfuse.runtime.backends.torch_backend import TorchBackend

    abstract = Backend.__abstractmethods__
    assert {"encode_images", "encode_prompts", "velocity", "regress", "decode"} <= abstract
    for cls in (TorchBackend, OnnxRuntimeBackend, TensorRTBackend):
        assert not cls.__abstractmethods__, f"{cls.__name__} leaves {cls.__abstractmethods__} abstract"


# ------------------------------------------------------------------ numerical parity (tiny preset, exported once)


DETAIL = DetailSettings.for_configs(DetailConfig(sigma=3.0, radius=2, fused_candidate=False),
                                    DetailConfig(sigma=1.5, radius=1))


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    from latentfuse.model.components import FusionComponents

    root = tmp_path_factory.mktemp("parity")
    components = FusionComponents.from_preset("tiny", seed=0)
    # as the bundled default (smaller window): the bundle must carry these to every runtime
    components.work_scale, components.window = 2, 64
    flow = components.dits["flow"]
    flow.config = flow.config.replace(prior="source_mean", prior_sigma=0.4)
    components.detail = DETAIL  # the canonical prompt runs the detail path on every runtime
    model_dir = components.save_pretrained(root / "model")
    bundle = root / "bundle"
    _export(model_dir, bundle)
    return model_dir, bundle


def _export(model_dir, bundle):
    from latentfuse.export.bundle import export_bundle

    # TorchScript exporter and no re-verification: ~5x faster than the default dynamo export, and
    # export parity is tests/export's job; this module checks the runtime over whatever export wrote.
    export_bundle(model_dir, bundle, exporter="torchscript", verify=False, lint=False, progress=False)


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((h, w, 3), dtype=np.float32), rng.random((h, w), dtype=np.float32)


@pytest.fixture(scope="module")
def pipelines(model_and_bundle):
    from latentfuse.runtime.pipeline import Pipeline

    model_dir, bundle = model_and_bundle
    return {"torch": Pipeline.from_checkpoint(model_dir, backend="torch"),
            "onnxruntime": Pipeline.from_bundle(bundle, backend="onnxruntime", providers="cpu")}


@pytest.mark.parametrize("mode,sampler,steps", [("flow", "midpoint_reuse_sde", 2), ("regression", None, None)])
def test_torch_and_onnxruntime_give_the_same_image(pipelines, mode, sampler, steps):
    a, b = _pair(53, 75)
    out = {name: p(a, b, task="vif", mode=mode, sampler=sampler, steps=steps, seed=11)
           for name, p in pipelines.items()}
    ref, ort = out["torch"], out["onnxruntime"]
    assert pipelines["torch"].work_scale == pipelines["onnxruntime"].work_scale == 2
    assert pipelines["torch"].window == pipelines["onnxruntime"].window == 64
    assert ref.info["tiled"] and ort.info["tiled"]  # 106x150 once enlarged: run in 64 px windows
    assert ref.image.shape == ort.image.shape == (53, 75, 3)
    assert ref.nfe == ort.nfe == (steps or 1)
    assert ref.info["detail"] == ort.info["detail"] == DETAIL.clean.as_dict()
    err = np.abs(ref.image - ort.image).max()
    assert err < 2e-3, f"torch vs onnxruntime max abs difference {err:.2e} (tolerance 2e-3)"
    # ... and the comparison is not vacuous: another seed moves the flow image far more than that
    if mode == "flow":
        other = pipelines["onnxruntime"](a, b, task="vif", mode="flow", sampler=sampler, steps=steps, seed=12)
        assert np.abs(other.image - ort.image).max() > 10 * err + 1e-3


def test_every_runtime_samples_from_the_prior_the_model_declares(pipelines):
    for name, pipe in pipelines.items():
        assert (pipe.defaults["prior"], pipe.defaults["prior_sigma"]) == ("source_mean", 0.4), name


def test_every_runtime_reads_the_detail_path_the_model_declares(pipelines, model_and_bundle):
    import json

    for name, pipe in pipelines.items():
        assert pipe.detail == DETAIL, name
    assert json.loads((model_and_bundle[1] / "manifest.json").read_text())["detail"] == DETAIL.to_dict()


def test_bundle_prompt_cache_serves_canonical_prompts_without_the_text_encoder(pipelines):
    from latentfuse.model.data.prompts import CANONICAL_TASK_PROMPTS

    ort = pipelines["onnxruntime"]
    assert set(CANONICAL_TASK_PROMPTS.values()) <= set(ort.prompt_cache)
    calls = ort.text_encoder_calls
    a, b = _pair(32, 32)
    hit = ort(a, b, task="mef", mode="regression")
    assert hit.timings.cache_hit and ort.text_encoder_calls == calls
    miss = ort(a, b, task="mef", mode="regression", prompt="remove the snow please, now")
    assert not miss.timings.cache_hit and ort.text_encoder_calls == calls + 1
    # the cached embedding is what the text encoder graph computes
    prompt = CANONICAL_TASK_PROMPTS["vif"]
    cached, cmask = ort.prompt_cache[prompt]
    fresh, fmask = ort.backend.encode_prompts([prompt])
    n = int(fmask.sum())
    assert int(cmask.sum()) == n
    np.testing.assert_allclose(cached[0, :n], fresh[0, :n], atol=1e-4)


def test_onnxruntime_tiles_the_vae_over_the_bundle_limit(pipelines, monkeypatch):
    ort = pipelines["onnxruntime"]
    max_h, max_w = ort.backend.max_image_size()
    a = np.full((16, max_w // 2 + 1, 3), 0.5, np.float32)  # over the limit once enlarged by the working scale
    seen = []
    encode = ort.backend.encode_images
    monkeypatch.setattr(ort.backend, "encode_images", lambda x: seen.append(x.shape[-1]) or encode(x))
    result = ort(a, a, task="vif", mode="regression")  # no flag needed
    assert result.image.shape == a.shape and result.info["tiled"]
    assert len(seen) > 1 and max(seen) <= max_w


# ------------------------------------------------------------------ TensorRT (where it imports and a GPU exists)

TRT_REASON = tensorrt_unavailable_reason()


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT backend unavailable: {TRT_REASON}")
def test_tensorrt_matches_onnxruntime(model_and_bundle, pipelines):
    from latentfuse.export.engines import build_bundle_engines
    from latentfuse.runtime.pipeline import Pipeline

    _, bundle = model_and_bundle
    build_bundle_engines(bundle, progress=False)
    trt_pipe = Pipeline.from_bundle(bundle, backend="tensorrt")
    a, b = _pair(64, 96)
    for mode in ("regression", "flow"):
        ref = pipelines["onnxruntime"](a, b, task="vif", mode=mode, steps=3, seed=5)
        first = trt_pipe(a, b, task="vif", mode=mode, steps=3, seed=5)
        replay = trt_pipe(a, b, task="vif", mode=mode, steps=3, seed=5)  # same shapes: CUDA-graph replay
        # FP16 engines: a looser bound than the FP32 ORT-vs-torch check
        assert np.abs(first.image - ref.image).max() < 5e-2
        np.testing.assert_allclose(replay.image, first.image, atol=1e-3)


def test_onnxruntime_tensorrt_provider_options_come_from_the_manifest_profile(model_and_bundle, tmp_path):
    from latentfuse.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from latentfuse.runtime.manifest import open_bundle

    backend = object.__new__(OnnxRuntimeBackend)  # only the option builder: no session is created
    backend.bundle, backend.provider_key = open_bundle(model_and_bundle[1]), "tensorrt"
    providers = backend._providers("dit_flow", fp16=True, cache=tmp_path / "cache")
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_fp16_enable"] and options["trt_engine_cache_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    profile = backend.bundle.profile("dit_flow")
    for level in ("min", "opt", "max"):
        spec = options[f"trt_profile_{level}_shapes"]
        for tensor, dims in profile[level].items():
            assert f"{tensor}:{'x'.join(map(str, dims))}" in spec.split(",")


def test_onnxruntime_gpu_provider_missing_says_what_to_install(model_and_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDA is installed here")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        get_backend("onnxruntime", bundle=model_and_bundle[1], providers="cuda")


def test_a_bad_working_scale_in_the_manifest_is_named(model_and_bundle, tmp_path):
    import json
    import shutil

    from latentfuse.runtime.pipeline import Pipeline

    bundle = tmp_path / "bundle"
    shutil.copytree(model_and_bundle[1], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["latent"]["work_scale"] = 1.5
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LatentfuseError, match=r"manifest.json latent.work_scale must be an integer from 1 to 4, got 1.5"):
        Pipeline.from_bundle(bundle, backend="onnxruntime", providers="cpu")
