"""scripts/train_default.py, the recipe of the bundled default model, end to end at toy sizes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPTS))  # train_default imports evaluate_default
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


@pytest.mark.slow
def test_recipe_builds_a_loadable_model_with_card_reuses_vae_stages_and_forks_dits_exactly(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from model.components import FusionComponents

    monkeypatch.syspath_prepend(str(SCRIPTS))
    train_default = _script("train_default")
    args = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--pairs", "2", "--per-pair", "1",
            "--test-pairs", "1", "--size", "160", "--vae-steps", "2", "--vae-patch", "32", "--vae-batch", "2",
            "--vae-decoder-steps", "2", "--vae-joint-steps", "2", "--vae-ft-patch", "32", "--vae-eval-patches", "2",
            "--crop", "32", "--batch", "2", "--reg-steps", "2", "--flow-steps", "2", "--ema", "0", "--threads", "1"]
    assert train_default.main(args) == 0

    out = tmp_path / "model"
    report = json.loads((out / "training_report.json").read_text())
    assert [st["stage"] for st in report["vae"]["stages"]] == ["scratch", "decoder", "joint"]
    assert [st["trainable"] for st in report["vae"]["stages"]] == ["all", "decoder", "all"]
    assert set(report["evaluation"]) == {"vif", "mef", "mff"}
    for rows in report["evaluation"].values():
        assert set(rows) == {"regression", "flow", "flow_sde", "teacher", "average"}
        assert rows["teacher"]["ssim_label"] == pytest.approx(1.0)
    card = (out / "MODEL_CARD.md").read_text()
    assert "| MEF | flow_sde |" in card and "issue's bar" in card and "scratch" in card
    FusionComponents.from_pretrained(out)  # fp16 weights load back

    # a second run with the same VAE settings reloads every VAE stage instead of training it again, and
    # the DiTs trained one after the other equal those trained side by side in forked workers
    log = tmp_path / "log.txt"
    monkeypatch.setattr(train_default, "log", lambda msg: log.open("a").write(msg + "\n"))
    assert train_default.main(args + ["--dit-workers", "1", "--out", str(tmp_path / "sequential")]) == 0
    assert log.read_text().count("reusing") == 3
    for head in ("dit_regression", "dit_flow"):
        forked, sequential = (load_file(next((root / head).glob("*.safetensors")))
                              for root in (out, tmp_path / "sequential"))
        assert forked.keys() == sequential.keys()
        assert all(torch.equal(forked[k], sequential[k]) for k in forked), head


def test_shortfalls_name_rows_at_or_below_the_average():
    train_default = _script("train_default")
    evaluation = {"vif": {"regression": {"qabf": 0.4}, "flow": {"qabf": 0.3}, "average": {"qabf": 0.3}},
                  "mef": {"regression": {"qabf": 0.2}, "average": {"qabf": 0.3}}}
    assert train_default._shortfalls(evaluation) == ["VIF flow", "MEF regression"]
