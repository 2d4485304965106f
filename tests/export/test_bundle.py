"""Deployment bundle end to end: export a tiny model once (module fixture), then check ONNX Runtime
parity at three new shapes per graph, the manifest, the prompt cache, tamper detection, ONNX-only
verification, atomicity of an interrupted export, and the CLI's errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import latentfuse.export.onnx as export_onnx
from latentfuse.export.bundle import export_bundle
from latentfuse.export.graphs import DEFAULT_SHAPES, bundle_spec
from latentfuse.model.components import FusionComponents
from latentfuse.model.config import DiTConfig
from latentfuse.model.data.prompts import canonical_prompts
from latentfuse.model.dit import MoEDiT
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.cli import main
from latentfuse.runtime.manifest import Bundle, load_manifest, open_bundle

GRAPHS = ["text_encoder", "vae_encoder", "vae_decoder", "dit_flow", "dit_regression"]


def tiny_components():
    """The tiny preset with one-block DiTs (export time) whose zero-initialised gates and output layer
    are perturbed, so the DiT graphs compute something non-trivial, like a trained model. The regression
    DiT exports the grouped MoE form (the paper preset's), the flow DiT the dense one (tiny's)."""
    comps = FusionComponents.from_preset("tiny", seed=0)
    gen = torch.Generator().manual_seed(1)
    for head in list(comps.dits):
        cfg = DiTConfig.from_preset("tiny", head=head, depth=1, text_dim=comps.text_encoder.hidden_size,
                                    export_moe_dispatch="grouped" if head == "regression" else "dense")
        dit = MoEDiT(cfg).eval()
        with torch.no_grad():
            for p in dit.parameters():
                if torch.count_nonzero(p) == 0:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        comps.dits[head] = dit
    return comps


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    comps = tiny_components()
    model_dir = comps.save_pretrained(root / "model")
    reports = []
    bundle = export_bundle(model_dir, root / "bundle", on_report=reports.append, progress=False)
    return {"root": root, "model_dir": model_dir, "bundle": bundle, "components": comps, "report": reports[0]}


def test_bundle_layout_and_manifest(exported):
    bundle = exported["bundle"]
    manifest = load_manifest(bundle)
    assert manifest["format"] == "latentfuse-bundle" and manifest["format_version"] == 1
    assert list(manifest["graphs"]) == GRAPHS
    for name, entry in manifest["graphs"].items():
        assert entry["file"] == f"{name}.onnx" and (bundle / entry["file"]).is_file()
        assert entry["exporter"] == "dynamo" and entry["precision"] == "fp32" and entry["opset"] == 20
        for rel in entry["external_data"]:
            assert rel in manifest["files"]
        assert set(entry["profile"]) == {"min", "opt", "max"}
        for key in ("min", "opt", "max"):
            assert set(entry["profile"][key]) == {t["name"] for t in entry["inputs"]}
    dit = manifest["graphs"]["dit_flow"]
    assert dit["kind"] == "dit" and dit["head"] == "flow"
    assert dit["moe_dispatch"] == "dense" and manifest["graphs"]["dit_regression"]["moe_dispatch"] == "grouped"
    assert "moe_dispatch" not in manifest["graphs"]["vae_encoder"]
    assert [t["name"] for t in dit["inputs"]] == ["z_t", "t", "z_a", "z_b", "prompt_embeds", "prompt_mask"]
    assert dit["inputs"][0]["shape"] == ["batch", 16, "latent_height", "latent_width"]
    assert manifest["graphs"]["vae_encoder"]["inputs"][0] == {"name": "image", "role": "image", "dtype": "float32",
                                                              "shape": ["batch", 3, "height", "width"]}
    assert manifest["latent"]["channels"] == 16 and manifest["latent"]["downsample"] == 8
    assert manifest["latent"]["work_scale"] == 1  # tiny_components: a model at its own size
    assert manifest["text"]["tokenizer"] == "spiece.model" and (bundle / "spiece.model").is_file()
    assert manifest["text"]["pad_id"] == 0 and manifest["text"]["eos_id"] == 1
    assert manifest["prompt_cache"]["prompts"] == canonical_prompts()
    assert manifest["source_checkpoint"] == str(Path(exported["model_dir"]).resolve())
    assert manifest["engines"] == {} and manifest["versions"]["opset"] == 20
    listed = set(manifest["files"])
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk
    assert not list(bundle.parent.glob(".bundle.tmp-*"))


def test_the_manifest_declares_the_prior_the_flow_dit_was_trained_from():
    from latentfuse.export.bundle import sampler_section
    from latentfuse.runtime import samplers

    comps = FusionComponents.from_preset("tiny", heads=("flow",), seed=0)
    assert sampler_section(comps) == {"name": samplers.DEFAULT_SAMPLER, "steps": samplers.DEFAULT_STEPS,
                                      "g": samplers.DEFAULT_G, "prior": "gaussian"}
    comps.dits["flow"].config = comps.dits["flow"].config.replace(prior="source_b", prior_sigma=0.25)
    section = sampler_section(comps)
    assert (section["prior"], section["prior_sigma"]) == ("source_b", 0.25)


def test_parity_at_three_new_shapes(exported):
    """The verification run inside the export: every graph at a square, a 16:9 and a portrait batch-2
    shape (none is the export example), within the spec tolerance, and every static check passing."""
    result = exported["report"]
    print("\n" + result.format())
    assert result.ok, result.failures()
    assert len(result.parity) == len(GRAPHS) * len(DEFAULT_SHAPES)
    for row in result.parity:
        assert row.passed and row.note == "", (row.graph, row.shape, row.note)
        assert 0 <= row.max_abs <= row.bound
    shapes = {(r.shape.batch, r.shape.height, r.shape.width) for r in result.parity}
    assert shapes == {(1, 64, 64), (1, 64, 112), (2, 96, 64)}
    statuses = {(c.graph, c.check): c.status for c in result.checks}
    for name in GRAPHS:
        for check in ("onnx.checker (full)", "symbolic dims", "no data-dep. shapes", "TensorRT ops"):
            assert statuses[(name, check)] == "pass", (name, check)
        assert statuses[(name, "polygraphy lint")] in ("pass", "skipped")


def test_prompt_cache_matches_text_encoder(exported):
    bundle = Bundle.open(exported["bundle"])
    text_encoder = exported["components"].text_encoder
    cache = bundle.prompt_cache()
    assert set(cache) == set(canonical_prompts())
    key, text = next(iter(bundle.prompts.items()))
    embeds, mask = bundle.prompt_embedding(text)
    ref_embeds, ref_mask = text_encoder.encode([text])
    np.testing.assert_allclose(embeds, ref_embeds.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    assert embeds.shape == (1, mask.shape[1], text_encoder.hidden_size)
    assert bundle.prompt_embedding(key)[0].shape == embeds.shape
    assert bundle.prompt_embedding("a prompt nobody cached") is None
    assert bundle.graph_path("dit_regression").name == "dit_regression.onnx"
    assert bundle.dit_graph("flow") == "dit_flow" and bundle.heads == ["flow", "regression"]


def _copy(exported, name):
    dst = exported["root"] / name
    shutil.copytree(exported["bundle"], dst)
    return dst


ROLES = {
    "text_encoder": ({"input_ids": "token_ids", "attention_mask": "attention_mask"}, {"prompt_embeds": "prompt_embeds"}),
    "vae_encoder": ({"image": "image"}, {"latent": "latent"}),
    "vae_decoder": ({"latent": "latent"}, {"image": "image"}),
    "dit_flow": ({"z_t": "noisy_latent", "t": "timestep", "z_a": "source_latent_a", "z_b": "source_latent_b",
                  "prompt_embeds": "prompt_embeds", "prompt_mask": "prompt_mask"}, {"velocity": "velocity"}),
    "dit_regression": ({"z_a": "source_latent_a", "z_b": "source_latent_b", "prompt_embeds": "prompt_embeds",
                        "prompt_mask": "prompt_mask"}, {"latent": "fused_latent"}),
}


def test_manifest_inputs_and_outputs_carry_roles(exported):
    manifest = load_manifest(exported["bundle"])
    assert manifest["format_minor"] == 1
    bundle = Bundle.open(exported["bundle"], verify_hashes=False)
    for name, (inputs, outputs) in ROLES.items():
        entry = manifest["graphs"][name]
        assert {t["name"]: t["role"] for t in entry["inputs"]} == inputs
        assert {t["name"]: t["role"] for t in entry["outputs"]} == outputs
        for tensor, role in inputs.items():
            assert bundle.input_for(name, role) == tensor
        for tensor, role in outputs.items():
            assert bundle.output_for(name, role) == tensor
        spec = bundle_spec(bundle, name)                   # the export view reads the roles back
        assert {t.name: t.role for t in spec.inputs} == inputs and {t.name: t.role for t in spec.outputs} == outputs
    with pytest.raises(LatentfuseError, match=r"no input with role 'timestep'"):
        bundle.input_for("dit_regression", "timestep")


def test_a_manifest_without_roles_still_loads_and_resolves_by_name(exported):
    """Bundles written before roles (format_minor 0): every tensor is found by the names export.graphs gives."""
    from latentfuse.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    copy = _copy(exported, "no_roles")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.pop("format_minor")
    for entry in manifest["graphs"].values():
        for t in entry["inputs"] + entry["outputs"]:
            t.pop("role")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = open_bundle(copy)
    for name, (inputs, outputs) in ROLES.items():
        assert {t["name"]: t["role"] for t in bundle.graph_entry(name).inputs} == inputs
        assert {t["name"]: t["role"] for t in bundle.graph_entry(name).outputs} == outputs
        assert {t.name: t.role for t in bundle_spec(Bundle.open(copy), name).outputs} == outputs
    assert bundle.input_for("dit_flow", "noisy_latent") == "z_t"
    assert bundle.output_for("dit_regression", "fused_latent") == "latent"
    # the backend runs it as it runs a bundle with roles
    old, new = OnnxRuntimeBackend(copy, providers="cpu"), OnnxRuntimeBackend(exported["bundle"], providers="cpu")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, int(exported["components"].vae.latent_channels), 4, 4)).astype(np.float32)
    embeds, mask = new.encode_prompts(["fuse the images"])
    np.testing.assert_array_equal(old.regress(z, z, embeds, mask), new.regress(z, z, embeds, mask))
    np.testing.assert_array_equal(old.velocity(z, np.array([0.5]), z, z, embeds, mask),
                                  new.velocity(z, np.array([0.5]), z, z, embeds, mask))


def test_manifest_hashes_detect_modified_and_missing_files(exported):
    copy = _copy(exported, "tampered")
    data = copy / "dit_flow.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                      # same size, different content
    data.write_bytes(bytes(raw))
    with pytest.raises(LatentfuseError, match=r"dit_flow\.onnx\.data was modified after export \(sha256"):
        load_manifest(copy)
    load_manifest(copy, verify_hashes=False)        # sizes still match
    (copy / "spiece.model").unlink()
    with pytest.raises(LatentfuseError, match=r"spiece\.model is missing"):
        load_manifest(copy, verify_hashes=False)
    assert main(["export", "--verify", str(copy)]) == 2


def test_verify_without_checkpoint_runs_onnx_only_checks(exported, capsys):
    copy = _copy(exported, "moved")
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source_checkpoint"] = str(exported["root"] / "deleted_model")
    manifest_path.write_text(json.dumps(manifest))
    assert main(["export", "--verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "parity (ONNX Runtime vs PyTorch) skipped" in out and "no longer exists" in out
    assert "TensorRT ops" in out and "polygraphy lint" in out and "verification passed" in out


def test_verify_with_checkpoint_cli(exported, capsys):
    assert main(["export", "--verify", str(exported["bundle"]), "--checkpoint", str(exported["model_dir"]),
                 "--no-lint"]) == 0
    out = capsys.readouterr().out
    assert "portrait" in out and "16:9" in out and "FAIL" not in out


def test_interrupted_export_leaves_nothing(exported, monkeypatch):
    out = exported["root"] / "interrupted"
    out.mkdir()
    (out / "previous.txt").write_text("an older bundle")
    real = export_onnx.export_graph
    calls = []

    def export_then_interrupt(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) > 1:
            raise KeyboardInterrupt  # Ctrl-C after the first graph was written
        return real(*args, **kwargs)

    monkeypatch.setattr(export_onnx, "export_graph", export_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(exported["model_dir"], out, force=True, components=exported["components"], progress=False)
    assert calls == ["text_encoder", "vae_encoder"]
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]          # the old bundle is untouched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".interrupted.")]


def test_cli_errors(exported, tmp_path):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    with pytest.raises(LatentfuseError, match="does not exist"):
        export_bundle(tmp_path / "nope", tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentfuseError, match="not a latentfuse model directory"):
        export_bundle(tmp_path / "empty", tmp_path / "b")
    with pytest.raises(LatentfuseError, match="already exists"):
        export_bundle(exported["model_dir"], exported["bundle"])
    with pytest.raises(LatentfuseError, match="fp16 export needs calibration"):
        export_bundle(exported["model_dir"], tmp_path / "b16", precision="fp16")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b16").exists()


def test_fp16_call_site_replaces_graph_files(exported, tmp_path):
    """--precision fp16 converts each exported graph through export.fp16 with the calibration plan."""
    import onnx

    from latentfuse.export.bundle import _convert_fp16
    from latentfuse.export.onnx import ExportedGraph

    pytest.importorskip("latentfuse.calibration.plan", reason="the precision plan module (calibration/) is not installed")
    for f in ("text_encoder.onnx", "text_encoder.onnx.data"):
        shutil.copy(exported["bundle"] / f, tmp_path / f)
    result = ExportedGraph("text_encoder", tmp_path / "text_encoder.onnx",
                           ["text_encoder.onnx", "text_encoder.onnx.data"], "dynamo", 20, 0.0)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "latentfuse-precision-plan/1", "thresholds": {}, "calibration_set": {},
                                "graphs": {"dit_flow": {"policy": "fp32", "fp32_nodes": []}}}))
    with pytest.raises(LatentfuseError, match="no entry for graph 'text_encoder'"):
        _convert_fp16(tmp_path, {"text_encoder": result}, plan)
    plan.write_text(json.dumps({"format": "latentfuse-precision-plan/1", "thresholds": {}, "calibration_set": {},
                                "graphs": {"text_encoder": {"policy": "mixed", "fp32_nodes": []}}}))
    _convert_fp16(tmp_path, {"text_encoder": result}, plan)
    model = onnx.load(str(tmp_path / result.files[0]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plan.json", *result.files])
