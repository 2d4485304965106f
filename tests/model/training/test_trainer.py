import math
from pathlib import Path

import pytest
import torch
from training_helpers import synthetic_latents, tiny_config, tiny_dit

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training import checkpoint as ckpt
from latentfuse.model.training.config import TrainConfig
from latentfuse.model.training.trainer import Trainer


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_short_run_lowers_every_loss_term(tmp_path, head):
    from latentfuse.model.vae import LatentVAE

    vae = LatentVAE.from_preset("tiny", seed=0)
    data = synthetic_latents(n=16, size=2, tasks=("vif",), images=True)
    cfg = tiny_config(tmp_path, head=head, data={"tasks": ["vif"]},
                      optim={"steps": 40, "lr": 3e-3, "batch_size": 4},
                      loss={"aux_weight": 0.05, "load_balance_weight": 0.05})
    history = Trainer(cfg, tiny_dit(head), data, vae=vae).fit()
    first, last = history[:6], history[-6:]
    for term in ("main", "aux", "balance", "loss"):
        assert _mean(last, term) < _mean(first, term), f"{term} did not decrease"
    assert (tmp_path / "run" / "train_log.csv").is_file()


def test_training_log_and_plot(tmp_path):
    cfg = tiny_config(tmp_path, optim={"steps": 4}, run={"plot": True})
    Trainer(cfg, tiny_dit(), synthetic_latents()).fit()
    lines = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert lines[0].startswith("step,task,lr,loss,main,aux,label,balance,ewc")
    assert len(lines) == 5
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.raw.state_dict().items()}


@pytest.mark.parametrize("head", ["flow", "regression"])
def test_resume_is_bit_exact(tmp_path, head):
    sections = dict(optim={"steps": 8, "grad_accum": 2}, ema={"decay": 0.9},
                    continual={"sequence": ["vif", "mef"], "ewc_lambda": 10.0, "replay_size": 8, "replay_ratio": 0.5,
                               "fisher_batches": 2})
    straight = Trainer(tiny_config(tmp_path / "a", head, **sections), tiny_dit(head), synthetic_latents())
    straight.fit()

    first = Trainer(tiny_config(tmp_path / "b", head, **sections), tiny_dit(head), synthetic_latents())
    first.fit(stop_at=3)   # interrupted inside task 1; resumes across the task boundary (EWC, replay)
    resumed = Trainer(tiny_config(tmp_path / "b", head, **sections), tiny_dit(head, seed=99), synthetic_latents())
    resumed.load_checkpoint(tmp_path / "b" / "run")
    assert resumed.step == 3
    resumed.fit()

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in straight.ema.shadow.items():
        assert torch.equal(v, resumed.ema.shadow[k]), k
    log = (tmp_path / "b" / "run" / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == [str(i) for i in range(1, 9)]


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, optim={"steps": 2})
    trainer = Trainer(cfg, tiny_dit(), synthetic_latents())
    trainer.fit()
    directory = ckpt.resolve(tmp_path / "run")
    state = directory / ckpt.STATE_NAME
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(LatentfuseError, match="corrupt or unreadable"):
        Trainer(cfg, tiny_dit(), synthetic_latents()).load_checkpoint(directory)
    weights = directory / ckpt.DIT_DIR / "model.safetensors"
    weights.write_bytes(b"not safetensors")
    with pytest.raises(LatentfuseError):
        ckpt.load_checkpoint(directory)
    with pytest.raises(LatentfuseError, match="not found"):
        ckpt.resolve(tmp_path / "nowhere")


def test_mismatched_checkpoint_gives_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, optim={"steps": 2})
    Trainer(cfg, tiny_dit(), synthetic_latents()).fit()
    other_lr = tiny_config(tmp_path, optim={"steps": 2, "lr": 1e-4})
    with pytest.raises(LatentfuseError, match="optim.lr"):
        Trainer(other_lr, tiny_dit(), synthetic_latents()).load_checkpoint(tmp_path / "run")
    with pytest.raises(LatentfuseError, match="different DiT"):
        Trainer(cfg, tiny_dit(depth=3), synthetic_latents()).load_checkpoint(tmp_path / "run")


def test_unknown_config_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(LatentfuseError, match=r"optim\.learning_rate.*valid keys"):
        TrainConfig.load(bad)
    (tmp_path / "bad2.yaml").write_text("optimiser:\n  lr: 1e-3\n")
    with pytest.raises(LatentfuseError, match=r"unknown \[optimiser\] \(valid sections"):
        TrainConfig.load(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.toml").write_text("[optim]\nsteps = 'many'\n")
    with pytest.raises(LatentfuseError, match="optim.steps must be an integer, got 'many'"):
        TrainConfig.load(tmp_path / "bad3.toml")
    (tmp_path / "bad4.toml").write_text("[flow]\nprior = 'uniform'\n")
    with pytest.raises(LatentfuseError, match="prior"):
        TrainConfig.load(tmp_path / "bad4.toml")
    (tmp_path / "bad5.toml").write_text("[data]\nwork_scale = 0\n")
    with pytest.raises(LatentfuseError, match="data.work_scale must be an integer from 1 to 4, got 0"):
        TrainConfig.load(tmp_path / "bad5.toml")


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[3] / "configs"
    files = sorted(root.glob("*.toml")) + sorted(root.glob("*.yaml"))
    assert {"paper_flow.toml", "paper_regression.toml"} <= {f.name for f in files}
    for f in files:
        cfg = TrainConfig.load(f)
        assert cfg.optim.steps > 0
    paper = TrainConfig.load(root / "paper_flow.toml")
    assert (paper.optim.lr, paper.optim.warmup_steps, paper.optim.batch_size, paper.optim.steps,
            paper.optim.grad_accum, paper.run.precision, paper.model.gradient_checkpointing,
            paper.optim.cautious) == (2e-4, 1000, 8, 200_000, 3, "bf16", True, True)


def test_bf16_autocast_and_gradient_checkpointing_run(tmp_path):
    cfg = tiny_config(tmp_path, run={"precision": "bf16"}, model={"gradient_checkpointing": True},
                      optim={"steps": 2, "grad_accum": 2})
    with pytest.warns(UserWarning, match="bf16 autocast on a CPU"):
        trainer = Trainer(cfg, tiny_dit(gradient_checkpointing=True), synthetic_latents())
    assert trainer.bf16  # CPU autocast supports bf16
    rows = trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(p.dtype == torch.float32 for p in trainer.raw.parameters())  # master weights stay fp32


def test_pixel_space_label_term_is_learned(tmp_path):
    from latentfuse.model.vae import LatentVAE

    data = synthetic_latents(n=16, size=2, tasks=("vif",), images=True)
    cfg = tiny_config(tmp_path, head="regression", data={"tasks": ["vif"]}, optim={"steps": 40, "lr": 3e-3},
                      loss={"aux_weight": 0.0, "label_weight": 1.0})
    history = Trainer(cfg, tiny_dit("regression"), data, vae=LatentVAE.from_preset("tiny", seed=0)).fit()
    assert _mean(history[-6:], "label") < _mean(history[:6], "label")
    assert all(r["aux"] == 0.0 for r in history)


def test_label_term_needs_label_images(tmp_path):
    from latentfuse.model.vae import LatentVAE

    data = synthetic_latents(n=8, size=2, tasks=("vif",), images=True)
    data.x_gt = None
    cfg = tiny_config(tmp_path, data={"tasks": ["vif"]}, loss={"aux_weight": 0.0, "label_weight": 0.1})
    with pytest.raises(LatentfuseError, match="label images"):
        Trainer(cfg, tiny_dit(), data, vae=LatentVAE.from_preset("tiny", seed=0))


def test_a_flow_dit_declares_the_prior_it_was_trained_from(tmp_path):
    from latentfuse.model.dit import MoEDiT

    cfg = tiny_config(tmp_path, "flow", optim={"steps": 2}, flow={"prior": "source-mean", "prior_sigma": 0.3})
    trainer = Trainer(cfg, tiny_dit("flow"), synthetic_latents())
    trainer.fit()
    trainer.raw.save_pretrained(tmp_path / "dit")
    declared = MoEDiT.from_pretrained(tmp_path / "dit").config
    assert (declared.prior, declared.prior_sigma) == ("source_mean", 0.3)
    with pytest.raises(LatentfuseError, match="prior: source prior 'source_a' needs a noise level sigma > 0"):
        declared.replace(prior="source_a", prior_sigma=0.0)


def test_a_dit_trains_at_the_working_scale_of_its_model_directory(tmp_path):
    from latentfuse.model.components import FusionComponents
    from latentfuse.model.training.run import load_frozen_components

    comps = FusionComponents.from_preset("tiny", heads=("regression",), seed=0)
    comps.work_scale = 2
    comps.save_pretrained(tmp_path / "model")
    cfg = tiny_config(tmp_path, model={"components": str(tmp_path / "model")})
    with pytest.raises(LatentfuseError, match=r"works at scale 2 \(model_index.json\), but data.work_scale = 1: set "
                                              r"data.work_scale = 2"):
        load_frozen_components(cfg)
    cfg = tiny_config(tmp_path, model={"components": str(tmp_path / "model")}, data={"work_scale": 2})
    vae, text_encoder = load_frozen_components(cfg)
    assert not any(p.requires_grad for p in vae.parameters())
