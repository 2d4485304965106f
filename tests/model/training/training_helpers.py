"""Helpers for the training tests: tiny DiTs on tiny synthetic latents (no VAE, no T5)."""

from __future__ import annotations

import torch

from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT
from latentfuse.model.training.config import TrainConfig
from latentfuse.model.training.data import LatentDataset

TINY = dict(hidden_size=32, depth=2, num_heads=2, lora_rank=8, text_dim=16, expert_hidden=48,
            pe_hidden=16, timestep_freq_dim=32)


def tiny_dit(head: str = "flow", seed: int = 0, **overrides) -> MoEDiT:
    torch.manual_seed(seed)
    return MoEDiT(DiTConfig.from_preset("tiny", head=head, **{**TINY, **overrides}))


def synthetic_latents(n: int = 32, size: int = 4, tasks=("vif", "mef"), seed: int = 0, images: bool = False,
                      conflicting: bool = False) -> LatentDataset:
    """Random source latents; the target is a fixed function of them per task.

    With ``conflicting`` the tasks ask for opposite maps (vif: z_a + z_b, mef: -(z_a + z_b)), so training
    the second task overwrites the first unless something protects it.
    """
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, 16, size, size, generator=g)
    z_b = torch.randn(n, 16, size, size, generator=g)
    task_ids = torch.arange(n) % len(tasks)
    sign = torch.where(task_ids == 0, 1.0, -1.0 if conflicting else 0.5)[:, None, None, None]
    z_gt = sign * 0.5 * (z_a + z_b)
    x = None
    if images:
        x = torch.randint(0, 256, (n, 3, size * 8, size * 8), generator=g, dtype=torch.uint8)
    return LatentDataset(z_a=z_a, z_b=z_b, z_gt=z_gt, prompt_ids=task_ids.clone(), task_ids=task_ids,
                         prompt_embeds=torch.randn(len(tasks), 5, 16, generator=g),
                         prompt_mask=torch.ones(len(tasks), 5, dtype=torch.long), tasks=tuple(tasks),
                         x_a=x, x_b=None if x is None else x.flip(-1).contiguous(),
                         # a smooth label (a ramp), which a decoder can actually render, unlike noise
                         x_gt=None if x is None else torch.linspace(0, 255, size * 8).round().to(torch.uint8)
                         .expand(n, 3, size * 8, size * 8).contiguous(),
                         prompts=tuple(f"fuse {t}" for t in tasks))


def tiny_config(tmp_path, head: str = "flow", **sections) -> TrainConfig:
    base = {
        "run": {"output_dir": str(tmp_path / "run"), "precision": "fp32", "device": "cpu", "progress": False,
                "plot": False, "checkpoint_every": 0},
        "model": {"head": head, "gradient_checkpointing": False},
        "data": {"tasks": ["vif", "mef"]},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "batch_size": 4, "grad_accum": 1, "steps": 10},
        "loss": {"aux_weight": 0.0, "load_balance_weight": 0.01},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(base)


# Every expert active (top-k = number of experts): a near-tied top-2 choice can flip between the
# 1-process and 2-process float reduction orders and send a token to another expert, so the exact
# comparison of tests/model/training/test_ddp.py would test routing ties, not gradient averaging.
DDP_DIT = dict(num_experts=2, top_k=2)
DDP_SECTIONS = dict(
    optim={"steps": 6, "batch_size": 8, "grad_accum": 2, "lr": 3e-3},
    # the Switch load-balancing loss is not additive over shards (see model.training.trainer)
    loss={"load_balance_weight": 0.0},
    continual={"sequence": ["vif", "mef"], "ewc_lambda": 100.0, "fisher_batches": 2, "replay_size": 8,
               "replay_ratio": 0.25},
)


def ddp_worker(rank: int, world: int, port: int, out_dir: str, result: str) -> None:
    """One process of a gloo DDP run of the tiny flow DiT (spawned by tests/model/training/test_ddp.py)."""
    import os
    from pathlib import Path

    import torch.distributed as dist

    from latentfuse.model.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config(Path(out_dir), head="flow", **DDP_SECTIONS)
        trainer = Trainer(cfg, tiny_dit("flow", **DDP_DIT), synthetic_latents())
        trainer.fit()
        if rank == 0:
            torch.save({k: v.clone() for k, v in trainer.raw.state_dict().items()}, result)
    finally:
        dist.destroy_process_group()
