"""The fidelity decoder as a deployed graph (model.fidelity, export.graphs FidelitySpec): exported and verified
with the bundle, run by the ONNX Runtime backend as the torch backend runs it, in strips of rows with the
model's halo (runtime.backends.tiled) equal to the whole image, planned by Pipeline.plan_memory.

The decoder is perturbed (conftest.perturb_fidelity): an untrained one is the identity, which no test could
tell from a missing stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentfuse.export.bundle import export_bundle, save_manifest
from latentfuse.export.graphs import FidelitySpec, graph_specs
from latentfuse.model.components import FusionComponents
from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.fidelity import receptive_halo
from latentfuse.runtime.backends import get_backend
from latentfuse.runtime.backends.tiled import GRID, TiledBackend, fidelity_halo, fidelity_strips
from latentfuse.runtime.manifest import Bundle, load_manifest
from latentfuse.runtime.model_info import ModelInfo
from latentfuse.runtime.pipeline import Pipeline



@pytest.fixture(scope="module")
def perturb(fidelity_perturbed):
    return fidelity_perturbed


def fidelity_components(perturb_fidelity) -> FusionComponents:
    """Tiny preset, a one-block regression DiT (export time), a perturbed fidelity decoder (tests/conftest.py)."""
    comps = FusionComponents.from_preset("tiny", heads=("regression",), seed=0, fidelity=True)
    cfg = DiTConfig.from_preset("tiny", head="regression", depth=1, text_dim=comps.text_encoder.hidden_size)
    comps.dits["regression"] = MoEDiT(cfg).eval()
    return perturb_fidelity(comps)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, perturb):
    root = tmp_path_factory.mktemp("fidelity")
    comps = fidelity_components(perturb)
    reports = []
    bundle = export_bundle(comps.save_pretrained(root / "model"), root / "bundle", on_report=reports.append,
                           progress=False)
    return {"root": root, "bundle": bundle, "components": comps, "report": reports[0]}


def _inputs(h: int, w: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32) for _ in range(3)]
    embeds = rng.standard_normal((1, 6, d)).astype(np.float32)
    embeds[:, 4:] = 0
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int64)
    return (*images, embeds, mask)


# ------------------------------------------------------------------ export
def test_from_preset_builds_an_untrained_decoder_that_the_test_helper_perturbs(perturb):
    comps = FusionComponents.from_preset("tiny", fidelity=True)
    assert comps.fidelity.config.text_dim == comps.text_encoder.hidden_size
    be = get_backend("torch", components=comps, device="cpu")
    x = _inputs(64, 48, comps.text_encoder.hidden_size)
    untrained = np.abs(be.fidelity(*x) - x[0]).mean()  # untrained: about F (model.fidelity)
    perturb(comps)
    assert np.abs(be.fidelity(*x) - x[0]).mean() > untrained + 0.05
    assert "fidelity" not in graph_specs(FusionComponents.from_preset("tiny"))


def test_spec_interface_roles_and_halo(perturb):
    comps = fidelity_components(perturb)
    spec = graph_specs(comps, ["regression"])["fidelity"]
    assert isinstance(spec, FidelitySpec)
    entry = spec.to_manifest()
    assert entry["kind"] == "fidelity" and entry["halo"] == fidelity_halo(comps.fidelity.config)
    assert entry["halo"] % GRID == 0 and entry["halo"] >= receptive_halo(comps.fidelity.config)
    assert [(t["name"], t["role"], t["dtype"]) for t in entry["inputs"]] == [
        ("image", "image", "float32"), ("source_a", "source_image_a", "float32"),
        ("source_b", "source_image_b", "float32"), ("prompt_embeds", "prompt_embeds", "float32"),
        ("prompt_mask", "prompt_mask", "int64")]
    assert entry["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert entry["inputs"][3]["shape"] == ["batch", "text_length", comps.text_encoder.hidden_size]
    assert [(t["name"], t["role"], t["shape"]) for t in entry["outputs"]] == [
        ("fused_image", "fused_image", ["batch", 3, "height", "width"])]
    prof = entry["profile"]
    assert prof["min"]["image"] == [1, 3, 64, 64] and prof["opt"]["image"] == [1, 3, 512, 512]
    assert prof["max"]["image"] == [4, 3, 1024, 1024] and prof["max"]["prompt_mask"][1] == comps.text_encoder.max_length
    comps.fidelity = type(comps.fidelity)(type(comps.fidelity.config)(text_dim=comps.text_encoder.hidden_size + 1))
    with pytest.raises(LatentfuseError, match="text_dim"):
        graph_specs(comps, ["regression"])


def test_export_verifies_the_fidelity_graph(exported):
    manifest = load_manifest(exported["bundle"])
    assert "fidelity" in manifest["graphs"]
    entry = manifest["graphs"]["fidelity"]
    assert entry["file"] == "fidelity.onnx" and entry["halo"] == 64 and entry["precision"] == "fp32"
    rows = [r for r in exported["report"].parity if r.graph == "fidelity"]
    assert len(rows) == 3 and all(r.passed and r.max_abs <= 1e-4 for r in rows)
    assert Bundle.open(exported["bundle"]).fidelity_halo() == 64


def test_a_decoder_that_selects_the_coarse_band_exports_and_verifies(tmp_path, perturb):
    """FidelityConfig.select_coarse (the coarse band's luma and colour chosen too): the same graph interface and
    halo, and ONNX Runtime parity at the exporter's unseen shapes."""
    from latentfuse.export.onnx import export_graph
    from latentfuse.export.verify import parity
    from latentfuse.model.fidelity import FidelityConfig, FidelityDecoder

    comps = fidelity_components(perturb)
    comps.fidelity = FidelityDecoder(FidelityConfig(text_dim=comps.text_encoder.hidden_size, select_coarse=True))
    perturb(comps)
    spec = graph_specs(comps, ["regression"])["fidelity"]
    assert spec.to_manifest()["halo"] == 64
    module = spec.module(comps)
    exported = export_graph(spec, module, tmp_path)
    rows = parity(spec, module, exported.path)
    assert len(rows) == 3 and all(r.passed and r.max_abs <= 1e-4 for r in rows)


# ------------------------------------------------------------------ backends
def test_onnxruntime_matches_torch(exported):
    comps = exported["components"]
    ort = get_backend("onnxruntime", bundle=exported["bundle"], providers="cpu")
    ref = get_backend("torch", components=comps, device="cpu")
    info, ref_info = ModelInfo.from_manifest(ort.bundle), ModelInfo.from_model_index(comps)
    assert info.has_fidelity and ref_info.has_fidelity and info.fidelity_halo == ref_info.fidelity_halo == 64
    x = _inputs(96, 80, comps.text_encoder.hidden_size, seed=3)
    out, want = ort.fidelity(*x), ref.fidelity(*x)
    assert np.abs(want - x[0]).max() > 0.05  # the decoder does something
    assert np.abs(out - want).max() < 1e-4


@pytest.mark.parametrize("rows", [16, 48, 96, 160])
def test_strips_equal_the_whole_image(exported, rows):
    comps = exported["components"]
    ort = get_backend("onnxruntime", bundle=exported["bundle"], providers="cpu")
    x = _inputs(320, 48, comps.text_encoder.hidden_size, seed=rows)
    whole = ort.fidelity(*x)
    tiled = TiledBackend(ort, None, None, fidelity_rows=rows, fidelity_halo=ModelInfo.from_manifest(ort.bundle).fidelity_halo)
    strips = tiled.fidelity(*x)
    assert tiled.calls == len(fidelity_strips(320, rows, 64)) > 1
    assert np.abs(strips - whole).max() < 1e-5


def test_a_halo_short_of_the_receptive_field_is_not_exact(perturb):
    comps = fidelity_components(perturb)
    ref = get_backend("torch", components=comps, device="cpu")
    x = _inputs(256, 32, comps.text_encoder.hidden_size)
    whole = ref.fidelity(*x)
    short = TiledBackend(ref, None, None, fidelity_rows=32, fidelity_halo=0)
    assert np.abs(short.fidelity(*x) - whole).max() > 1e-3  # the check above can fail


def test_strip_layout():
    for height, rows, halo in [(320, 64, 64), (400, 96, 64), (48, 16, 0), (1024, 512, 48), (64, 64, 64)]:
        strips = fidelity_strips(height, rows, halo)
        assert strips[0][0] == 0 and strips[-1][1] == height
        for (y0, y1, c0, c1), nxt in zip(strips, strips[1:] + [None]):
            assert all(v % GRID == 0 for v in (y0, y1, c0, c1)) and 0 < y1 - y0 <= rows
            assert c0 == max(0, y0 - halo) or c1 - c0 >= 32
            assert c0 <= max(0, y0 - halo) and c1 >= min(height, y1 + halo) and c1 - c0 >= min(height, 32)
            if nxt:
                assert nxt[0] == y1
    with pytest.raises(LatentfuseError, match="grid"):
        fidelity_strips(320, 24, 64)


def test_bad_halo_in_a_manifest_is_a_clear_error(exported, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported["bundle"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["fidelity"]["halo"] = 50
    save_manifest(copy, manifest)
    with pytest.raises(LatentfuseError, match="halo"):
        Bundle.open(copy).fidelity_halo()


# ------------------------------------------------------------------ pipeline and plan
def test_pipeline_onnxruntime_matches_torch_with_the_weight(exported):
    comps = exported["components"]
    rng = np.random.default_rng(5)
    a, b = rng.random((40, 56, 3), dtype=np.float32), rng.random((40, 56), dtype=np.float32)
    ort = Pipeline.from_bundle(exported["bundle"], backend="onnxruntime", providers="cpu")
    ref = Pipeline.from_components(comps, device="cpu")
    off = ort(a, b, fidelity=0)
    results = {}
    for w in (None, 0.5, 1.0):
        got, want = ort(a, b, fidelity=w), ref(a, b, fidelity=w)
        assert np.abs(got.image - want.image).max() < 1e-3
        assert got.info["fidelity"] == (1.0 if w is None else w)
        assert got.timings.stages["Fidelity"] > 0
        results[w] = got.image
    assert np.abs(results[1.0] - off.image).max() > 0.02
    inside = np.all([(r > 0.001) & (r < 0.999) for r in (results[0.5], results[1.0], off.image)], axis=0)
    assert inside.mean() > 0.9  # where nothing was clipped, w blends linearly
    np.testing.assert_allclose(results[0.5][inside], 0.5 * (results[1.0] + off.image)[inside], atol=1e-4)
    assert off.timings.stages.get("Fidelity", 0) == 0


def test_pipeline_runs_strips_as_the_plan_says(exported):
    import dataclasses

    ort = Pipeline.from_bundle(exported["bundle"], backend="onnxruntime", providers="cpu")
    rng = np.random.default_rng(1)
    a, b = rng.random((300, 40, 3), dtype=np.float32), rng.random((300, 40, 3), dtype=np.float32)
    whole = ort(a, b)
    assert whole.info["memory"]["fidelity_rows"] is None and not whole.info["tiled"]
    plan_memory = ort.plan_memory
    ort.plan_memory = lambda *args, **kw: dataclasses.replace(plan_memory(*args, **kw), fidelity_rows=64)
    strips = ort(a, b)
    assert strips.info["memory"]["fidelity_rows"] == 64 and strips.info["tiled"]
    assert np.abs(strips.image - whole.image).max() < 1e-5
    ort.plan_memory = plan_memory
    ort.backend.bundle.max_image_size = lambda: (256, 256)  # a graph limit below the pair's height
    assert ort.plan_memory(304, 48, (300, 40)).fidelity_rows == 256 - 2 * 64


def test_plan_memory_accounts_for_the_fidelity_decoder(perturb):
    comps = fidelity_components(perturb)
    pipe = Pipeline.from_components(comps, device="cpu")
    with_f = pipe.plan_memory(3008, 4000, (1504, 2000), max_memory="3G")
    without = pipe.plan_memory(3008, 4000, (1504, 2000), max_memory="3G", fidelity=False)
    assert without.fidelity_rows is None and with_f.fidelity_rows is not None
    assert with_f.fidelity_rows % GRID == 0 and with_f.fidelity_rows + 2 * 64 <= 1024
    assert with_f.peak >= without.peak and with_f.as_dict()["fidelity_rows"] == with_f.fidelity_rows
    assert pipe.plan_memory(480, 640, max_memory="64G").fidelity_rows is None
    roomy = pipe.plan_memory(3008, 4000, (1504, 2000), max_memory="64G")
    assert roomy.fidelity_rows == 1024 - 2 * 64  # the graph's side limit (MAX_SIDE for torch), less the halos
    assert with_f.fidelity_rows < roomy.fidelity_rows  # the budget
    with pytest.raises(LatentfuseError, match="fidelity decoder"):
        pipe.plan_memory(3008, 4000, (1504, 2000), max_memory="1.2G")


def test_weights_are_checked(exported, tmp_path):
    plain = FusionComponents.from_preset("tiny", heads=("regression",))
    pipe = Pipeline.from_components(plain, device="cpu")
    img = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(LatentfuseError, match="no fidelity decoder"):
        pipe(img, img, fidelity=0.5)
    assert pipe(img, img, fidelity=0).info["fidelity"] == 0.0
    ort = Pipeline.from_bundle(exported["bundle"], backend="onnxruntime", providers="cpu")
    for bad in (1.5, -0.1, "x"):
        with pytest.raises(LatentfuseError, match=r"\[0, 1\]"):
            ort(img, img, fidelity=bad)
    assert torch.is_tensor(torch.zeros(1))
