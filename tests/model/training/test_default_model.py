"""``latentfuse train --recipe`` (model.training.recipe_cli, default_model, model_card): the recipe of the
bundled default model, end to end at toy sizes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentfuse.model.training import default_model, model_card, recipe_cli

SHIPPED = Path(__file__).resolve().parents[3] / "configs" / "recipes" / "default.toml"


def run(argv: list[str]) -> int:
    """``latentfuse train --recipe <the shipped recipe> ARGV`` (a later --recipe in ARGV wins)."""
    return recipe_cli.main(["--recipe", str(SHIPPED), *argv])


@pytest.mark.slow
def test_recipe_builds_a_loadable_model_with_card_reuses_vae_stages_and_forks_dits_exactly(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from latentfuse.model.components import FusionComponents

    args = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--pairs", "2", "--per-pair", "1",
            "--test-pairs", "1", "--size", "160", "--vae-steps", "2", "--vae-patch", "32", "--vae-batch", "2",
            "--vae-decoder-steps", "2", "--vae-joint-steps", "2", "--vae-ft-patch", "32", "--vae-eval-patches", "2",
            "--crop", "32", "--crops-per-tuple", "1", "--batch", "2", "--reg-steps", "2", "--flow-steps", "2", "--flow-finetune-steps", "0",
            "--ema", "0", "--threads", "1", "--data", "synthetic", "--work-scale", "2", "--detail", "false",
            "--eval-seeds", "1", "--fidelity", "false"]
    assert run(args) == 0

    out = tmp_path / "model"
    report = json.loads((out / "training_report.json").read_text())
    assert [st["stage"] for st in report["vae"]["stages"]] == ["scratch", "decoder", "joint"]
    assert [st["trainable"] for st in report["vae"]["stages"]] == ["all", "decoder", "all"]
    assert set(report["evaluation"]["tasks"]) == {"vif", "mef", "mff"}
    for protocols in report["evaluation"]["tasks"].values():  # latentfuse evaluate's report (bench.quality)
        assert set(protocols) == {"clean", "degraded"}
        rows = protocols["clean"]["methods"]
        assert set(rows) == {"regression", "flow", "average", "average_detail"}  # no detail stage: no _no_detail row
        assert rows["average"]["above_average"] == 0.0 and 0.0 <= rows["flow"]["above_average"] <= 1.0
        assert protocols["clean"]["n"] == 1 and protocols["degraded"]["n"] == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "### MEF, degraded" in card and "| flow |" in card and "Against the control" in card and "scratch" in card
    from latentfuse.runtime.manifest import sha256_file

    recipe = report["recipe"]  # the shipped recipe file, its hash, and this run's overrides
    assert recipe["sha256"] == sha256_file(recipe["path"]) and len(recipe["sha256"]) == 64
    assert recipe["overrides"]["reg_steps"] == 2 and recipe["overrides"]["detail"] is False
    assert f"(sha256 {recipe['sha256'][:12]})" in card
    # fp16 weights load back, with the working scale the DiTs were trained at
    assert FusionComponents.from_pretrained(out).work_scale == 2
    assert report["dit_regression"]["config"]["data"]["work_scale"] == 2

    def dit_weights(root):
        return {head: load_file(next((root / head).glob("*.safetensors"))) for head in ("dit_regression", "dit_flow")}

    def same(a, b):
        return a.keys() == b.keys() and all(x.keys() == b[h].keys() and all(torch.equal(x[k], b[h][k]) for k in x)
                                            for h, x in a.items())

    # a second run with the same VAE settings reloads every VAE stage instead of training it again, and
    # the DiTs (their kept stages removed) trained one after the other equal those trained side by side
    # in forked workers
    log = tmp_path / "log.txt"
    monkeypatch.setattr(default_model, "log", lambda msg: log.open("a").write(msg + "\n"))
    for head in ("regression", "flow"):
        shutil.rmtree(tmp_path / "work" / f"dit_{head}" / "final")
    assert run(args + ["--dit-workers", "1", "--out", str(tmp_path / "sequential")]) == 0
    assert log.read_text().count("reusing") == 3
    assert same(dit_weights(out), dit_weights(tmp_path / "sequential"))

    # a third run with a larger held-out set reuses all five stages, measures them on the new set and says so
    log.write_text("")
    third = tmp_path / "more_held_out"
    assert run(args + ["--test-pairs", "2", "--out", str(third)]) == 0
    assert log.read_text().count("reusing") == 5
    assert same(dit_weights(out), dit_weights(third))
    report = json.loads((third / "training_report.json").read_text())
    assert report["data"]["test_pairs"] == 2
    assert [report["evaluation"]["tasks"][t]["clean"]["n"] for t in ("vif", "mef", "mff")] == [2, 2, 2]
    assert all(st["reused"] for st in report["vae"]["stages"]) and report["dit_flow"]["reused"]
    assert "reusing the stages VAE scratch, VAE decoder, VAE joint, regression DiT, flow DiT" in \
        (third / "MODEL_CARD.md").read_text()

    # a second flow stage starts from the first one's weights, is kept, and a later run reuses it
    tuned = tmp_path / "finetuned"
    finetune = ["--flow-finetune-steps", "2", "--flow-finetune-lr", "1e-3"]
    assert run(args + finetune + ["--out", str(tuned)]) == 0
    report = json.loads((tuned / "training_report.json").read_text())
    assert report["dit_flow"]["finetune"]["steps"] == 2 and report["dit_flow"]["reused"]
    assert report["dit_flow"]["finetune"]["config"]["model"]["init_from"].endswith("dit_flow/final")
    assert "then 2 steps from those weights at lr 0.001" in (tuned / "MODEL_CARD.md").read_text()
    tuned_weights, first_weights = dit_weights(tuned), dit_weights(out)
    assert same({"dit_regression": tuned_weights["dit_regression"]}, {"dit_regression": first_weights["dit_regression"]})
    assert not same({"dit_flow": tuned_weights["dit_flow"]}, {"dit_flow": first_weights["dit_flow"]})
    log.write_text("")
    assert run(args + finetune + ["--out", str(tmp_path / "finetuned_again")]) == 0
    assert log.read_text().count("reusing") == 6
    assert same(tuned_weights, dit_weights(tmp_path / "finetuned_again"))


def test_shortfalls_name_rows_at_or_below_the_control():

    def clean(**qabf):
        return {"clean": {"methods": {name: {"qabf": {"mean": q}} for name, q in qabf.items()}}}

    evaluation = {"tasks": {"vif": clean(regression=0.4, flow=0.3, average_detail=0.3),
                            "mef": clean(regression=0.2, average_detail=0.3)}}
    assert model_card._shortfalls(evaluation) == ["VIF flow", "MEF regression"]


def test_a_dit_worker_killed_without_reporting_fails_the_run_instead_of_hanging(monkeypatch):
    import os
    import signal
    from types import SimpleNamespace

    from latentfuse.model.errors import LatentfuseError


    def train_stage_dit(args, head, steps, dataset, vae, report):  # runs in the forked worker
        if head == "flow":
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does: no traceback, no result
        report[f"dit_{head}"] = {}
        return "weights"

    monkeypatch.setattr(default_model, "train_stage_dit", train_stage_dit)
    with pytest.raises(LatentfuseError, match=r"flow DiT: worker exited with code -9 \(killed by a signal"):
        default_model._train_dits(SimpleNamespace(dit_workers=2), [("regression", 1), ("flow", 1)],
                                  dataset=None, vae=None, report={})


def test_bad_dit_or_flow_settings_fail_before_any_work(tmp_path, capsys):
    from latentfuse.model.errors import LatentfuseError

    with pytest.raises(LatentfuseError, match="head dim 25 must be a multiple of 4"):
        run(["--work", str(tmp_path / "work"), "--dit-width", "100"])
    with pytest.raises(LatentfuseError, match="flow.prior: source prior 'source_mean' needs a noise level sigma > 0"):
        run(["--work", str(tmp_path / "work"), "--flow-prior", "source_mean", "--prior-sigma", "0"])
    with pytest.raises(LatentfuseError, match="optim.lr must be positive"):
        run(["--work", str(tmp_path / "work"), "--flow-finetune-lr", "0"])
    with pytest.raises(SystemExit):  # argparse: the override's form
        run(["--work", str(tmp_path / "work"), "--detail-clean", "8,4"])
    assert ("--detail-clean takes sigma,radius,fused_candidate,noise_k,channels (e.g. 8,4,0,3,luma), got '8,4'"
            in capsys.readouterr().err)
    with pytest.raises(LatentfuseError, match=r"recipe not found: .*nope.toml"):
        run(["--work", str(tmp_path / "work"), "--recipe", str(tmp_path / "nope.toml")])
    with pytest.raises(LatentfuseError, match="detail sigma must be positive"):
        run(["--work", str(tmp_path / "work"), "--detail-safe", "0,4,1,3,rgb"])
    with pytest.raises(LatentfuseError, match="detail channels must be one of luma, rgb, got 'hsv'"):
        run(["--work", str(tmp_path / "work"), "--detail-clean", "8,4,0,0,hsv"])
    with pytest.raises(LatentfuseError, match=r"--real-data .*nothing: no vif/, mef/, mff/ folder"):
        run(["--work", str(tmp_path / "work"), "--real-data", str(tmp_path / "nothing")])
    assert not (tmp_path / "work").exists()


def _real_layout(root, per_task: int = 4):
    """``../shared/datasets``' layouts in miniature: vif/<set>/{vi,ir}/NAME, {mef,mff}/input/<scene>/<scene>_A|B,
    with scene names picked so that every task has training and held-out scenes (model/data/split.py)."""
    from latentfuse.model.data.split import split_of
    from latentfuse.model.image_io import write_image

    def textured(h, w, seed, rgb=True):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w] / w
        base = 0.5 + 0.2 * np.sin(2 * np.pi * (3 + seed % 4) * xx) * np.cos(2 * np.pi * 2 * yy)
        base = np.clip(base + 0.05 * rng.standard_normal((h, w)), 0.05, 0.95).astype(np.float32)
        return np.stack([base, base ** 1.2, base ** 0.8], -1) if rgb else base

    names = {"train": [], "heldout": []}
    for i in range(200):
        name = f"scene{i:03d}"
        bucket = names[split_of(name)]
        if len(bucket) < (1 if bucket is names["heldout"] else per_task - 1):
            bucket.append(name)
    scenes = names["train"] + names["heldout"]
    for i, scene in enumerate(scenes):
        vis, ir = textured(120, 160, seed=i), textured(120, 160, seed=100 + i, rgb=False)
        write_image(root / "vif" / "Road" / "vi" / f"{scene}.png", vis)
        write_image(root / "vif" / "Road" / "ir" / f"{scene}.png", ir)
        base = textured(120, 160, seed=200 + i)
        write_image(root / "mef" / "input" / scene / f"{scene}_A.png", np.clip(base * 0.5, 0, 1))
        write_image(root / "mef" / "input" / scene / f"{scene}_B.jpg", np.clip(base * 1.6, 0, 1))
        write_image(root / "mff" / "input" / scene / f"{scene}_A.png", base)
        write_image(root / "mff" / "input" / scene / f"{scene}_B.png", base.mean(-1))  # gray B, as in MFIFB
    return scenes


@pytest.mark.slow
def test_real_layout_recipe_trains_from_a_model_directory_and_scores_held_out_scenes_only(tmp_path):
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.data.split import split_of

    scenes = _real_layout(tmp_path / "datasets")
    init = FusionComponents.from_preset("tiny", seed=0).save_pretrained(tmp_path / "init")
    args = ["--data", "real", "--real-data", str(tmp_path / "datasets"), "--init-from", str(init),
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--per-pair", "1", "--size", "160",
            "--test-size", "160", "--crop", "32", "--crops-per-tuple", "20", "--window", "32", "--batch", "4", "--reg-steps", "120",
            "--flow-steps", "4", "--flow-finetune-steps", "0", "--ema", "0", "--threads", "1", "--dit-workers", "1",
            "--lr", "2e-3", "--detail-clean", "3,2,0,0,rgb", "--detail-safe", "1.5,1,1,3,luma",
            "--fidelity-steps", "2", "--fidelity-batch", "2", "--fidelity-crop", "32", "--fidelity-per-pair", "1",
            "--fidelity-size", "160", "--fidelity-select-coarse", "true"]
    assert run(args) == 0

    out = tmp_path / "model"
    report = json.loads((out / "training_report.json").read_text())
    # a short run on real-layout data lowers the loss
    reg = report["dit_regression"]
    assert reg["final_main_loss"] < 0.9 * reg["first_main_loss"], reg
    assert reg["config"]["model"]["init_from"].endswith("init/dit_regression")
    # training read training scenes only; the evaluation the held-out ones, clean and degraded
    train_root = next((tmp_path / "work" / "build").glob("real_train_*"))
    trained = {json.loads(line)["pair"] for m in train_root.rglob("index.jsonl") for line in m.read_text().splitlines()}
    assert trained and all(split_of(name) == "train" for name in trained)
    heldout = [s for s in scenes if split_of(s) == "heldout"]
    assert report["data"]["test_samples"] == 3 * len(heldout)
    assert set(report["evaluation"]["tasks"]) == {"vif", "mef", "mff"}
    for protocols in report["evaluation"]["tasks"].values():
        for protocol, entry in protocols.items():
            assert {p["scene"].rsplit("__", 1)[-1] for p in entry["pairs"]} <= set(heldout) and entry["n"] == len(heldout) * (
                3 if protocol == "degraded" else 1)
            rows = entry["methods"]
            # a model with a fidelity decoder runs no detail stage by default: its ablation row is the decoder's
            assert {"regression", "regression_no_fidelity", "flow", "average", "average_detail"} <= set(rows)
            assert rows["regression"]["seconds"]["mean"] > 0
        assert "classical" in protocols["degraded"]["methods"]
    # the model carries its detail path; the card says where the data, VAE and DiTs came from
    saved = FusionComponents.from_pretrained(out)
    assert saved.work_scale == 1 and saved.detail.clean.sigma == 3.0 and saved.detail.safe.radius == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "trained on real registered pairs" in card and "Detail path" in card and "kept from" in card
    assert "### VIF, degraded" in card and "| regression_no_fidelity |" in card
    # the fidelity decoder, trained last on the saved model's own output, ships with it in fp16; the report and
    # the card carry its section; the evaluation has the model without it as a row
    fidelity = report["fidelity"]
    assert set(fidelity) == {"config", "steps", "final_loss", "seconds", "tuples", "prompts", "validation", "data"}
    assert fidelity["steps"] == 2 and fidelity["config"]["crop"] == 32 and fidelity["data"]["per_pair"] == 1
    assert all({"n", "psnr_input", "psnr_output"} <= set(row) for row in fidelity["validation"].values())
    assert saved.fidelity is not None and (out / "fidelity" / "training.json").is_file()
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(next((out / "fidelity").glob("*.safetensors"))).values()} == {__import__("torch").float16}
    assert "## Fidelity decoder" in card and "| `fidelity/` |" in card
    # the recipe's decoder shape reaches the decoder and its card row
    assert saved.fidelity.config.select_coarse and fidelity["config"]["model"]["select_coarse"]
    assert "coarse band's luma and colour chosen" in card
    assert "Built by `latentfuse train --recipe`" in card and report["command"].startswith("latentfuse train --recipe ")
    assert "--fidelity-steps 2" in report["command"]
    assert "regression_no_fidelity" in report["evaluation"]["tasks"]["vif"]["clean"]["methods"]
    # the fidelity stage's work belongs to the model it was made with: a re-run keeps it for the same DiTs and
    # VAE and makes it again for others (the regression DiT reloaded from its kept stage is not always the
    # in-memory one bit for bit, so the test checks the rule, not which case happens)
    made_with = json.loads((tmp_path / "work" / "fidelity" / "model.json").read_text())
    cached = sorted((tmp_path / "work" / "fidelity" / "cache").glob("*.npz"))
    assert cached and made_with["sha256"]
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert run(args + ["--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "work" / "fidelity" / "model.json").read_text())
    assert again["model"] == str(tmp_path / "again")
    same = [p.stat().st_mtime_ns for p in sorted((tmp_path / "work" / "fidelity" / "cache").glob("*.npz"))] == mtimes
    assert same == (again["sha256"] == made_with["sha256"])


def test_train_takes_a_recipe_or_a_config_and_keeps_their_flags_apart(tmp_path, capsys):
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.runtime.cli import build_parser

    def train(*argv):
        args = build_parser().parse_args(["train", *argv])
        return args.func(args)

    with pytest.raises(SystemExit):  # one of the two, not both
        build_parser().parse_args(["train", "--config", "c.toml", "--recipe", str(SHIPPED)])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(LatentfuseError, match="--reg-steps, --only-vae go.* with --recipe, not --config"):
        train("--config", "configs/tiny_flow.toml", "--reg-steps", "2", "--only-vae")
    with pytest.raises(LatentfuseError, match="--resume go.* with --config"):
        train("--recipe", str(SHIPPED), "--resume", str(tmp_path))
    with pytest.raises(LatentfuseError, match=r"recipe not found: .*nope.toml"):
        train("--recipe", str(tmp_path / "nope.toml"), "--work", str(tmp_path / "work"))
    with pytest.raises(LatentfuseError, match="fidelity decoder: --fidelity-steps 0: must be positive"):
        train("--recipe", str(SHIPPED), "--work", str(tmp_path / "work"), "--data", "synthetic", "--fidelity-steps", "0")
    assert not (tmp_path / "work").exists()


def test_the_card_template_ships_with_the_package_and_names_the_command():
    text = model_card.template().template
    assert "Built by `latentfuse train --recipe`" in text and "$fidelity_section" in text
    assert "scripts/" not in text


@pytest.mark.parametrize("edge_sources, words", [("clean", "on clean tuples, towards the stronger source's"),
                                                  ("all", "on every tuple, towards the stronger clean source's"),
                                                  ("corruptions", "only rained, snowed, striped, JPEG'd or noised")])
def test_the_card_says_where_the_fidelity_edge_term_looked(edge_sources, words):
    from latentfuse.model.training.model_card import _fidelity_parts

    report = {"params": {"fidelity": 348196}, "fidelity": {
        "config": {"source_grad_weight": 1.5, "edge_sources": edge_sources, "batch_size": 6, "crop": 160, "lr": 2e-3,
                   "model": {"select_coarse": False}},
        "steps": 3000, "seconds": 10.0, "tuples": 5, "prompts": 2, "final_loss": 0.3, "validation": {}, "data": {}}}
    row, _, _ = _fidelity_parts(report)
    assert words in row and "coarse band" not in row
    report["fidelity"]["config"]["model"]["select_coarse"] = True
    assert "coarse band's luma and colour chosen" in _fidelity_parts(report)[0]
