"""Windows and tiles (runtime.backends.tiled, Pipeline.plan_windows): the VAE once per image, the DiT's
windows batched, any size without flags, and the VAE's tiles close to the whole image."""

from __future__ import annotations

import numpy as np
import pytest

from latentfuse.model.errors import LatentfuseError


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((h, w, 3), dtype=np.float32), rng.random((h, w), dtype=np.float32)


def _slim_components(work_scale=1, window=0):
    """The tiny preset with a slimmer VAE, so that camera-size pairs stay quick on two cores."""
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.vae import LatentVAE

    comps = FusionComponents.from_preset("tiny", seed=0)
    comps.vae = LatentVAE.from_preset("tiny", seed=0, block_out_channels=[8, 8, 16, 16], norm_num_groups=4).eval()
    comps.work_scale, comps.window = work_scale, window
    return comps


@pytest.fixture(scope="module")
def windowed():
    from latentfuse.runtime.pipeline import Pipeline

    return Pipeline.from_components(_slim_components(work_scale=1, window=64))


@pytest.mark.parametrize("mode", ["flow", "regression"])
def test_batched_windows_equal_one_window_per_call(windowed, mode):
    a, b = _pair(80, 128)
    calls = []
    inner = windowed.backend
    for name in ("velocity", "regress"):
        fn = getattr(inner, name)
        setattr(inner, name, (lambda f: lambda *args: calls.append(args[0].shape[0]) or f(*args))(fn))
    try:
        windowed.max_dit_batch = 64
        batched = windowed(a, b, task="vif", mode=mode, steps=2 if mode == "flow" else None, seed=3)
        per_call_batched = list(calls)
        calls.clear()
        windowed.max_dit_batch = 1
        single = windowed(a, b, task="vif", mode=mode, steps=2 if mode == "flow" else None, seed=3)
    finally:
        windowed.max_dit_batch = 64
        for name in ("velocity", "regress"):
            setattr(inner, name, getattr(type(inner), name).__get__(inner))
    n_windows = len(calls) // (2 if mode == "flow" else 1)
    assert n_windows > 4 and per_call_batched == [n_windows] * (2 if mode == "flow" else 1)
    np.testing.assert_allclose(batched.image, single.image, atol=1e-5)


def test_chunks_respect_the_backend_batch_limit(windowed, monkeypatch):
    seen = []
    inner = windowed.backend
    regress = inner.regress
    monkeypatch.setattr(inner, "regress", lambda z_a, *r: seen.append(z_a.shape[0]) or regress(z_a, *r))
    monkeypatch.setattr(inner, "max_batch_size", lambda: 3)
    windowed(*_pair(112, 176), task="mef", mode="regression")
    assert max(seen) == 3 and sum(seen) > 3


def test_the_vae_sees_each_whole_image_once(windowed, monkeypatch):
    inner = windowed.backend
    shapes = []
    enc, dec = inner.encode_images, inner.decode
    monkeypatch.setattr(inner, "encode_images", lambda x: shapes.append(("enc", x.shape)) or enc(x))
    monkeypatch.setattr(inner, "decode", lambda z: shapes.append(("dec", z.shape)) or dec(z))
    result = windowed(*_pair(100, 150), task="mff", mode="regression")
    assert result.info["tiled"]  # the DiT ran in 64 px windows ...
    assert shapes == [("enc", (2, 3, 112, 160)), ("dec", (1, 16, 14, 20))]  # ... the VAE on the whole pair


def test_vae_tiles_match_the_whole_image(monkeypatch):
    """Tiles of the VAE over a size limit: GroupNorm statistics and the mid-block attention are per tile,
    so tiling is not exact; with the default overlap the tiled round trip stays close to the whole one."""
    from latentfuse.runtime.backends.tiled import TiledBackend
    from latentfuse.runtime.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint("model/weights/default") if _default_exists() else pytest.skip("no default")
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(2, 3, 256, 384)), axis=2), axis=3)
    x = np.tanh(smooth / smooth.std()).astype(np.float32)
    whole = pipe.backend.decode(pipe.backend.encode_images(x))
    tiled = TiledBackend(pipe.backend, None, (256, 256))
    out = tiled.decode(tiled.encode_images(x))
    assert tiled.calls == 8  # two tiles each way, one image per call
    psnr = 10 * np.log10(4.0 / np.mean((np.clip(out, -1, 1) - np.clip(whole, -1, 1)) ** 2))
    assert psnr > 30, f"tiled VAE round trip {psnr:.1f} dB from the whole image's"


def _default_exists():
    from latentfuse.model.components import DEFAULT_MODEL_DIR, INDEX_NAME

    return (DEFAULT_MODEL_DIR / INDEX_NAME).is_file()


def test_plan_windows(windowed, monkeypatch):
    assert windowed.plan_windows(64, 64) == (None, None)
    assert windowed.plan_windows(64, 96) == ((64, 64), None)
    assert windowed.plan_windows(1040, 96) == ((64, 64), (768, 768))
    assert windowed.plan_windows(128, 128, tile=96) == ((64, 64), (96, 96))
    assert windowed.plan_windows(1040, 96, tile=2048) == ((64, 64), (1024, 1024))  # capped by MAX_SIDE
    monkeypatch.setattr(windowed.backend, "max_image_size", lambda: (256, 512))
    assert windowed.plan_windows(300, 300, tile=400) == ((64, 64), (256, 400))
    with pytest.raises(LatentfuseError, match="--tile needs at least 32 px"):
        windowed.plan_windows(64, 64, tile=16)


# ------------------------------------------------------------------ camera-size pairs, no flags


@pytest.fixture(scope="module")
def slim_model_and_bundle(tmp_path_factory):
    from latentfuse.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("slim")
    model_dir = _slim_components().save_pretrained(root / "model")
    bundle = root / "bundle"
    export_bundle(model_dir, bundle, heads=["regression"], exporter="torchscript", verify=False, lint=False,
                  progress=False)
    return model_dir, bundle


@pytest.mark.parametrize("size", [(480, 640), (1500, 2000)])
def test_camera_size_pairs_fuse_on_torch_and_onnxruntime_without_flags(slim_model_and_bundle, size):
    from latentfuse.runtime.pipeline import Pipeline

    model_dir, bundle = slim_model_and_bundle
    a, b = _pair(*size)
    torch_pipe = Pipeline.from_checkpoint(model_dir)
    ort_pipe = Pipeline.from_bundle(bundle, backend="onnxruntime", providers="cpu")
    _, vae_tile = ort_pipe.plan_windows(*size)
    seen = []
    encode = ort_pipe.backend.encode_images
    ort_pipe.backend.encode_images = lambda x: seen.append(x.shape[-2:]) or encode(x)
    out = {name: p(a, b, task="vif", mode="regression") for name, p in
           (("torch", torch_pipe), ("onnxruntime", ort_pipe))}
    for result in out.values():
        assert result.image.shape == size + (3,) and np.isfinite(result.image).all()
    assert (vae_tile is None) == (size == (480, 640))  # whole at 640x480; tiles at 2000x1500
    assert len(seen) == 1 if vae_tile is None else all(h <= vae_tile[0] and w <= vae_tile[1] for h, w in seen)
    # the same windows and tiles on both: the images agree to export precision
    diff = np.abs(out["torch"].image - out["onnxruntime"].image)
    assert diff.mean() < 1e-4 and diff.max() < 1e-2, (diff.mean(), diff.max())


# ------------------------------------------------------------------ even tiles, streaming, the memory plan


@pytest.mark.parametrize("size,limit,overlap", [(1920, 768, 64), (3008, 768, 64), (4000, 768, 128), (800, 768, 64),
                                                (768, 768, 64), (1040, 256, 64)])
def test_balanced_tiles_are_even_within_the_limit(size, limit, overlap):
    from latentfuse.runtime.backends.tiled import balanced_side, window_starts

    side = balanced_side(size, limit, overlap)
    assert side % 16 == 0 and side <= limit
    starts = window_starts(size, side, overlap, 16)
    flush = -(-(size - overlap) // (limit - overlap))  # the fewest tiles of the limit that cover the side
    assert len(starts) == (1 if size <= limit else flush) and starts[-1] + side == size
    # every neighbour shares at least the overlap, and the tiles' work is the side plus the overlaps, up to
    # one grid step per tile (flush tiles of the limit: up to a whole tile more)
    assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))
    assert len(starts) * side <= size + (len(starts) - 1) * overlap + len(starts) * 16


def test_blended_in_place_equals_the_list_blend():
    from latentfuse.runtime.backends.tiled import Blender, grid_windows

    rng = np.random.default_rng(1)
    windows = grid_windows(40, 56, (128, 128), 32, 8)
    values = [rng.normal(size=(2, 4, h, w)).astype(np.float32) for _, _, h, w in windows]
    # the blend as it was: every output held, then one weighted sum
    from latentfuse.runtime.backends.tiled import ramp

    out, weight = np.zeros((2, 4, 40, 56), np.float32), np.zeros((40, 56), np.float32)
    for value, (y, x, h, w) in zip(values, windows):
        wgt = ramp(h, 4)[:, None] * ramp(w, 4)[None, :]
        out[..., y:y + h, x:x + w] += value * wgt
        weight[y:y + h, x:x + w] += wgt
    blender = Blender((2, 4, 40, 56), 4)
    for value, window in zip(values, windows):  # row by row, as the tiled VAE adds one image per call
        blender.add(value[:1], window, slice(0, 1))
        blender.add(value[1:], window, slice(1, 2))
    np.testing.assert_array_equal(blender.result(), out / weight)


def test_tiled_vae_calls_take_one_image_and_one_tile(windowed, monkeypatch):
    inner = windowed.backend
    shapes = []
    enc, dec = inner.encode_images, inner.decode
    monkeypatch.setattr(inner, "encode_images", lambda x: shapes.append(x.shape) or enc(x))
    monkeypatch.setattr(inner, "decode", lambda z: shapes.append(z.shape) or dec(z))
    result = windowed(*_pair(200, 300), task="vif", mode="regression", tile=128)
    tile = result.info["memory"]["vae_tile"]
    assert tile == (128, 128) and all(s[0] == 1 for s in shapes)
    assert all(s[-2] * (8 if s[1] == 16 else 1) <= 128 for s in shapes)


def test_the_memory_plan_shrinks_to_the_budget_and_refuses_what_it_cannot_meet(windowed):
    from latentfuse.runtime.memory import parse_memory

    roomy = windowed.plan_memory(3008, 4000, (3000, 4000), max_memory="64G")
    tight = windowed.plan_memory(3008, 4000, (3000, 4000), max_memory="1.2G")
    assert roomy.vae_tile == (768, 768) and roomy.peak <= parse_memory("64G")
    assert max(tight.vae_tile) < 768 and tight.peak <= parse_memory("1.2G")
    assert windowed.plan_memory(480, 640, max_memory="64G").vae_tile is None  # whole, as before
    with pytest.raises(LatentfuseError, match=r"--max-memory 512 MB cannot be met: a 4000x3000 pair needs at least"):
        windowed.plan_memory(3008, 4000, (3000, 4000), max_memory="512M")
    for bad in ("3Q", "-1G", "0"):
        with pytest.raises(LatentfuseError, match="--max-memory"):
            parse_memory(bad)
    assert parse_memory("1.5G") == 3 * 2 ** 29 and parse_memory("3000MB") == 3000 * 2 ** 20


def test_only_a_pair_the_plan_tiles_asks_the_backend_to_hand_memory_back(windowed):
    backend = windowed.backend
    windowed(*_pair(48, 64), task="vif", mode="regression")
    assert backend.low_memory is False  # small: the runtime keeps its arenas (faster)
    result = windowed(*_pair(200, 300), task="vif", mode="regression", tile=128)
    assert result.info["memory"]["vae_tile"] is not None and backend.low_memory is True
    windowed(*_pair(48, 64), task="vif", mode="regression")
    assert backend.low_memory is False
