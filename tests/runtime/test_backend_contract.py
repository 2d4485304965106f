"""The contract every backend keeps for the pipeline (runtime/backends/base.py, ``Backend``), checked
the same way on torch, ONNX Runtime and TensorRT: a tiny model, a small image, every graph call's
shapes and dtypes, the model's settings, batching, heads and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.image_processing.detail import DetailConfig, DetailSettings
from latentfuse.runtime.backends import get_backend
from latentfuse.runtime.backends.base import Backend
from latentfuse.runtime.backends.tensorrt_backend import tensorrt_unavailable_reason

TRT_REASON = tensorrt_unavailable_reason()
BACKENDS = ("torch", "onnxruntime",
            pytest.param("tensorrt", marks=[pytest.mark.tensorrt, pytest.mark.skipif(
                TRT_REASON is not None, reason=f"TensorRT backend unavailable: {TRT_REASON}")]))
H, W = 32, 48                   # a small image, a multiple of 16
WORK_SCALE, WINDOW = 2, 64      # not the defaults of Backend: a backend must report the model's own
PRIOR, PRIOR_SIGMA = "source_mean", 0.4
DETAIL = DetailSettings.for_configs(DetailConfig(sigma=3.0, radius=2, fused_candidate=False),
                                    DetailConfig(sigma=1.5, radius=1))
PROMPTS = ["fuse the visible and infrared images", "remove the haze"]
#: max abs difference of a batch-of-2 row and the same input alone (fp32 graphs; TensorRT builds fp16 engines)
BATCH_TOL = {"torch": 1e-4, "onnxruntime": 1e-4, "tensorrt": 2e-2}


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    from latentfuse.export.bundle import export_bundle
    from latentfuse.model.components import FusionComponents

    root = tmp_path_factory.mktemp("contract")
    components = FusionComponents.from_preset("tiny", seed=0)
    components.work_scale, components.window = WORK_SCALE, WINDOW
    flow = components.dits["flow"]
    flow.config = flow.config.replace(prior=PRIOR, prior_sigma=PRIOR_SIGMA)
    components.detail = DETAIL
    model_dir = components.save_pretrained(root / "model")
    bundle = root / "bundle"
    # TorchScript exporter, no re-verification: export parity is tests/export's job
    export_bundle(model_dir, bundle, exporter="torchscript", verify=False, lint=False, progress=False)
    return model_dir, bundle


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, model_and_bundle) -> Backend:
    model_dir, bundle = model_and_bundle
    if request.param == "torch":
        return get_backend("torch", checkpoint=model_dir, device="cpu")
    if request.param == "onnxruntime":
        return get_backend("onnxruntime", bundle=bundle, providers="cpu")
    from latentfuse.export.engines import build_bundle_engines

    build_bundle_engines(bundle, progress=False)
    return get_backend("tensorrt", bundle=bundle)


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 3, H, W), dtype=np.float32) * 2 - 1).astype(np.float32)


def _inputs(backend: Backend, batch: int = 1):
    """Latents of two sources, a noisy latent, t and the prompt embeddings, batched ``batch`` rows."""
    z_a = backend.encode_images(_images(batch, seed=1))
    z_b = backend.encode_images(_images(batch, seed=2))
    rng = np.random.default_rng(3)
    z_t = rng.standard_normal(z_a.shape).astype(np.float32)
    t = np.linspace(0.3, 0.7, batch, dtype=np.float32)
    embeds, mask = backend.encode_prompts(PROMPTS[:batch] if batch <= len(PROMPTS) else PROMPTS[:1] * batch)
    return z_a, z_b, z_t, t, embeds, mask


def _is_array(x, shape, dtype=np.float32) -> bool:
    return isinstance(x, np.ndarray) and x.shape == tuple(shape) and x.dtype == dtype


# ------------------------------------------------------------------ graph calls


@pytest.mark.parametrize("batch", [1, 2])
def test_graph_calls_give_the_documented_shapes_and_dtypes(backend, batch):
    images = _images(batch)
    z = backend.encode_images(images)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.ndim == 4
    assert z.shape[0] == batch and z.shape[2:] == (H // 8, W // 8), z.shape
    assert np.isfinite(z).all()

    embeds, mask = backend.encode_prompts(PROMPTS[:batch])
    assert embeds.dtype == np.float32 and embeds.ndim == 3 and embeds.shape[0] == batch
    assert _is_array(mask, embeds.shape[:2], np.int64)
    assert set(np.unique(mask)) <= {0, 1} and (mask.sum(1) > 0).all()

    z_t = np.random.default_rng(0).standard_normal(z.shape).astype(np.float32)
    t = np.full(batch, 0.5, np.float32)
    v = backend.velocity(z_t, t, z, z, embeds, mask)
    fused = backend.regress(z, z, embeds, mask)
    assert _is_array(v, z.shape) and _is_array(fused, z.shape)
    assert np.isfinite(v).all() and np.isfinite(fused).all()

    out = backend.decode(fused)
    assert _is_array(out, (batch, 3, H, W)) and np.isfinite(out).all()


def test_a_batch_of_two_equals_two_calls_of_one(backend):
    tol = BATCH_TOL[backend.name]
    images = _images(2)
    both = backend.encode_images(images)
    one = [backend.encode_images(images[i:i + 1]) for i in range(2)]
    np.testing.assert_allclose(both, np.concatenate(one), atol=tol, err_msg="encode_images")

    embeds, mask = backend.encode_prompts(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        e1, m1 = backend.encode_prompts([prompt])
        n = int(m1.sum())
        assert int(mask[i].sum()) == n, "a prompt's tokens do not depend on its batch"
        np.testing.assert_allclose(embeds[i, :n], e1[0, :n], atol=tol, err_msg=f"encode_prompts row {i}")

    z_a, z_b, z_t, t, embeds, mask = _inputs(backend, batch=2)
    rows = [(z_a[i:i + 1], z_b[i:i + 1], z_t[i:i + 1], t[i:i + 1], embeds[i:i + 1], mask[i:i + 1]) for i in range(2)]
    np.testing.assert_allclose(backend.velocity(z_t, t, z_a, z_b, embeds, mask),
                               np.concatenate([backend.velocity(zt, tt, za, zb, e, m) for za, zb, zt, tt, e, m in rows]),
                               atol=tol, err_msg="velocity")
    np.testing.assert_allclose(backend.regress(z_a, z_b, embeds, mask),
                               np.concatenate([backend.regress(za, zb, e, m) for za, zb, _, _, e, m in rows]),
                               atol=tol, err_msg="regress")
    np.testing.assert_allclose(backend.decode(z_a), np.concatenate([backend.decode(z_a[i:i + 1]) for i in range(2)]),
                               atol=tol, err_msg="decode")


# ------------------------------------------------------------------ heads and the model's settings


def test_heads_and_require_head(backend):
    assert isinstance(backend.heads, tuple) and set(backend.heads) == {"flow", "regression"}
    for head in backend.heads:
        backend.require_head(head)  # no error
    with pytest.raises(LatentfuseError) as err:
        backend.require_head("upscale")
    msg = str(err.value)
    assert "'upscale'" in msg and backend.name in msg and "flow" in msg and "regression" in msg


def test_settings_are_the_models_own(backend, model_and_bundle):
    """The model's settings reach the pipeline as one ModelInfo, read from where the backend's model lives
    (components or manifest; a backend runs graphs only); the model directory read without its weights agrees."""
    from latentfuse.runtime.model_info import ModelInfo

    for method in ("work_scale", "window", "sampler_defaults", "detail_settings", "has_fidelity", "fidelity_halo"):
        assert not hasattr(backend, method), method
    info = ModelInfo.of(backend)
    assert type(info.work_scale) is int and info.work_scale == WORK_SCALE
    assert type(info.window) is int and info.window == WINDOW
    defaults = info.sampler_defaults
    assert defaults.get("prior") == PRIOR and defaults.get("prior_sigma") == pytest.approx(PRIOR_SIGMA)
    assert info.detail == DETAIL and info.heads == ("flow", "regression")
    assert not info.has_fidelity and info.fidelity_halo == 0
    index = ModelInfo.from_model_index(model_and_bundle[0])
    assert (index.heads, index.work_scale, index.window, index.detail) == (info.heads, WORK_SCALE, WINDOW, DETAIL)
    assert index.sampler_defaults["prior"] == PRIOR
    assert isinstance(backend.describe(), str) and backend.describe()


def test_size_and_batch_limits_have_the_documented_types(backend):
    def int_or_none(x):
        return x is None or (isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0)

    size = backend.max_image_size()
    assert size is None or (isinstance(size, tuple) and len(size) == 2 and all(int_or_none(s) for s in size)), size
    assert int_or_none(backend.min_image_size()), backend.min_image_size()
    assert int_or_none(backend.max_batch_size()), backend.max_batch_size()
    if size is not None and backend.min_image_size() is not None:
        assert backend.min_image_size() <= min(size)
    backend.synchronize()  # always callable (a no-op on CPU)


# ------------------------------------------------------------------ bad input

#: entry points that check their float inputs for NaN / Inf, and what the message names
NAN_CASES = {
    "encode_images": "images",
    "decode": "latents",
    "velocity z_t": "z_t",
    "velocity z_a": "z_a",
    "regress z_a": "z_a",
    "regress embeds": "prompt embeddings",
}


def _nan_call(backend: Backend, case: str):
    z_a, z_b, z_t, t, embeds, mask = _inputs(backend)
    nan = np.full_like(z_a, np.nan)
    if case == "encode_images":
        return lambda: backend.encode_images(np.full((1, 3, H, W), np.nan, np.float32))
    if case == "decode":
        return lambda: backend.decode(nan)
    if case == "velocity z_t":
        return lambda: backend.velocity(nan, t, z_a, z_b, embeds, mask)
    if case == "velocity z_a":
        return lambda: backend.velocity(z_t, t, nan, z_b, embeds, mask)
    if case == "regress z_a":
        return lambda: backend.regress(nan, z_b, embeds, mask)
    if case == "regress embeds":
        return lambda: backend.regress(z_a, z_b, np.full_like(embeds, np.nan), mask)
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(NAN_CASES))
def test_nan_input_is_a_latentfuse_error_naming_it(backend, case):
    call = _nan_call(backend, case)
    with pytest.raises(LatentfuseError) as err:
        call()
    msg = str(err.value)
    assert "NaN" in msg and NAN_CASES[case] in msg, msg
