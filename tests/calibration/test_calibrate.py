"""End to end on a tiny exported bundle: calibrate -> plan -> mixed-precision graphs; engine profiles."""

import json
import warnings

import pytest

from latentfuse.calibration.plan import load_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, fidelity_perturbed):
    """An FP32 bundle of the tiny preset (1-block DiTs with perturbed zero-init gates, a perturbed fidelity
    decoder: the fifth graph is calibrated and converted like the others), TorchScript export."""
    import torch

    from latentfuse.export.bundle import export_bundle
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT
    from latentfuse.model.text_encoder import PromptEncoder
    from latentfuse.model.vae import LatentVAE

    torch.manual_seed(0)
    vae, text = LatentVAE.from_preset("tiny").eval(), PromptEncoder.from_preset("tiny").eval()
    dits = {}
    for head in ("flow", "regression"):
        dit = MoEDiT(DiTConfig.from_preset("tiny", head=head, depth=1, text_dim=text.hidden_size,
                                           latent_channels=vae.latent_channels)).eval()
        with torch.no_grad():
            for p in dit.parameters():
                if torch.count_nonzero(p) == 0:
                    p.normal_(0, 0.05)
        dits[head] = dit
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_bundle(out.parent / "none", out, components=fidelity_perturbed(FusionComponents(vae, text, dits)),
                      exporter="torchscript", verify=False, progress=False)
    return out


@pytest.fixture(scope="module")
def cli_plan(tiny_bundle, tmp_path_factory):
    """``latentfuse calibrate`` on the tiny bundle: (plan, printed table)."""
    import contextlib
    import io

    from latentfuse.runtime.cli import main

    out = tmp_path_factory.mktemp("plan") / "plan.json"
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        code = main(["calibrate", "--bundle", str(tiny_bundle), "--out", str(out), "--samples", "3",
                     "--sizes", "64"])
    assert code == 0
    return load_plan(out), table.getvalue()


def test_calibrate_cli_writes_a_measured_plan(tiny_bundle, cli_plan):
    plan, table = cli_plan
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert set(plan["graphs"]) == set(manifest["graphs"]) and "precision plan ->" in table
    limit, tol = plan["thresholds"]["range_limit"], plan["thresholds"]["norm_tolerance"]
    assert plan["calibration_set"]["tasks"] == {"mef": 1, "mff": 1, "vif": 1}
    for name, entry in plan["graphs"].items():
        for node in entry["fp32_nodes"]:  # every FP32 node carries the measurement that put it there
            if node["reason"] == "range":
                assert node["value"] == "inf" or node["value"] > limit
            elif node["reason"] == "fp16_error":
                assert node["value"] == "inf" or node["value"] > tol
        if entry["policy"] == "mixed":
            assert entry["fp16_error"]["nonfinite"] == 0
            assert entry["fp16_error"]["rel"] <= plan["graph_tolerance"], name
    # T5's additive attention mask is finfo(float32).min: the nodes touching it must stay FP32.
    text = plan["graphs"]["text_encoder"]
    assert text["reason_counts"].get("range", 0) >= 1 and text["max_abs"] > 1e38


def test_plan_converts_the_bundle_graphs(tiny_bundle, cli_plan, tmp_path):
    import onnx

    from latentfuse.export.fp16 import convert_bundle_graph

    plan, _ = cli_plan
    for name in ("text_encoder", "dit_flow", "fidelity"):
        stats = convert_bundle_graph(tiny_bundle / f"{name}.onnx", tmp_path / f"{name}.onnx", plan["graphs"][name])
        model = onnx.load(str(tmp_path / f"{name}.onnx"))
        kinds = {i.data_type for i in model.graph.initializer if i.data_type in (1, 10)}
        assert 10 in kinds and stats["fp32_nodes"] == plan["graphs"][name]["num_fp32_nodes"]
        assert [i.type.tensor_type.elem_type for i in model.graph.input] == \
            [i.type.tensor_type.elem_type for i in onnx.load(str(tiny_bundle / f"{name}.onnx"),
                                                              load_external_data=False).graph.input]


def test_build_engines_dry_run_on_a_real_manifest(tiny_bundle, capsys):
    from latentfuse.runtime.cli import main

    assert main(["build-engines", str(tiny_bundle), "--dry-run",
                 "--profile", "dit_flow=64x64:256x256:512x512"]) == 0
    captured = capsys.readouterr()
    jobs = {j["graph"]: j for j in map(json.loads, captured.out.strip().splitlines())}
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert set(jobs) == set(manifest["graphs"])
    assert jobs["vae_encoder"]["profile"] == manifest["graphs"]["vae_encoder"]["profile"]
    assert jobs["dit_flow"]["profile"]["max"]["z_t"][2:] == [64, 64]  # 512 px / 8
    # The override narrows dit_flow below the bundle's 1024 px: reported, not silent.
    assert "dit_flow profile rejects image sizes" in captured.err and "fp32 graph" in captured.err
