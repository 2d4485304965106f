"""Continual VIF → MEF training: EWC and experience replay must reduce forgetting of the first task.

The two synthetic tasks ask for opposite maps of the same inputs (vif: +(z_a+z_b)/2, mef: -(z_a+z_b)/2),
told apart only by the prompt, so plain sequential training overwrites task 1.
"""

import pytest
import torch
from training_helpers import synthetic_latents, tiny_config, tiny_dit

from latentfuse.model.training.ewc import EWC
from latentfuse.model.training.replay import ReservoirBuffer
from latentfuse.model.training.trainer import Trainer

STEPS_PER_TASK = 50


def _forgetting(tmp_path, **continual):
    cfg = tiny_config(tmp_path, head="regression",
                      optim={"steps": 2 * STEPS_PER_TASK, "lr": 3e-3, "warmup_steps": 5, "batch_size": 8},
                      loss={"load_balance_weight": 0.0},
                      continual={"sequence": ["vif", "mef"], **continual})
    trainer = Trainer(cfg, tiny_dit("regression"), synthetic_latents(n=32, conflicting=True))
    trainer.fit(stop_at=STEPS_PER_TASK)
    after_task1 = trainer.evaluate("vif")
    trainer.fit()
    return after_task1, trainer.evaluate("vif"), trainer.evaluate("mef")


def test_ewc_and_replay_reduce_forgetting(tmp_path):
    base_t1, base_forgot, base_t2 = _forgetting(tmp_path / "base")
    ewc_t1, ewc_forgot, _ = _forgetting(tmp_path / "ewc", ewc_lambda=1e5, fisher_batches=4)
    rep_t1, rep_forgot, rep_t2 = _forgetting(tmp_path / "replay", replay_size=16, replay_ratio=0.5)
    assert base_t1 == pytest.approx(ewc_t1) == pytest.approx(rep_t1)  # identical first task
    assert base_forgot > 2 * base_t1                                   # sequential training forgets
    assert ewc_forgot < base_forgot - 0.03
    assert rep_forgot < base_forgot - 0.02
    assert rep_t2 < 0.45  # replay still learns the new task (0.5 = predicting zero)


def test_reservoir_is_uniform_and_bounded():
    buf = ReservoirBuffer(capacity=50, ratio=0.25)
    g = torch.Generator().manual_seed(0)
    for start in range(0, 1000, 10):
        buf.add(range(start, start + 10), g)
    assert len(buf) == 50 and buf.seen == 1000
    assert 300 < sum(buf.items) / len(buf.items) < 700  # a uniform sample of 0..999 has mean ~500
    assert buf.replay_count(8) == 2
    state = buf.state_dict()
    other = ReservoirBuffer(50, 0.25)
    other.load_state_dict(state)
    assert other.items == buf.items


def test_ewc_penalty_is_zero_at_anchor_and_quadratic():
    model = torch.nn.Linear(3, 2)
    ewc = EWC(lam=2.0)
    grads = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    ewc.consolidate(model, grads, batches=1)
    assert float(ewc.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight.add_(0.5)
    # λ/2 · Σ F·Δ² = 1 · 6 · 0.25
    assert float(ewc.penalty(model).detach()) == pytest.approx(1.5)
