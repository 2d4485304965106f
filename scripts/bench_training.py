#!/usr/bin/env python
"""Training throughput (samples/s) of a DiT preset on this machine: full optimizer steps of the real
trainer (flow loss + load balance, cautious AdamW) on random latents, batch B, latent size S×S.

    python scripts/bench_training.py --preset paper --batch 1 --latent 32 --steps 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def bench(preset: str, head: str, batch: int, latent: int, steps: int, precision: str, checkpointing: bool,
          device: str = "cpu") -> dict:
    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT
    from latentfuse.model.training.config import TrainConfig
    from latentfuse.model.training.data import LatentDataset
    from latentfuse.model.training.trainer import Trainer

    dit_cfg = DiTConfig.from_preset(preset, head=head, gradient_checkpointing=checkpointing)
    g = torch.Generator().manual_seed(0)
    n = max(4, batch)
    data = LatentDataset(
        z_a=torch.randn(n, 16, latent, latent, generator=g), z_b=torch.randn(n, 16, latent, latent, generator=g),
        z_gt=torch.randn(n, 16, latent, latent, generator=g), prompt_ids=torch.zeros(n, dtype=torch.long),
        task_ids=torch.zeros(n, dtype=torch.long), prompt_embeds=torch.randn(1, 16, dit_cfg.text_dim, generator=g),
        prompt_mask=torch.ones(1, 16, dtype=torch.long), tasks=("vif",))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({
            "run": {"output_dir": tmp, "device": device, "precision": precision, "progress": False, "plot": False,
                    "checkpoint_every": 0},
            "model": {"preset": preset, "head": head, "gradient_checkpointing": checkpointing},
            "data": {"tasks": ["vif"]},
            "optim": {"batch_size": batch, "grad_accum": 1, "steps": steps + 1, "warmup_steps": 1},
            "loss": {"aux_weight": 0.0},
        })
        torch.manual_seed(0)
        trainer = Trainer(cfg, MoEDiT(dit_cfg), data, device=device)
        trainer.train_step()  # warm-up (allocations, autocast caches)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    per_step = sorted(times)[len(times) // 2]
    return {"preset": preset, "head": head, "batch": batch, "latent": latent, "precision": precision,
            "gradient_checkpointing": checkpointing, "threads": torch.get_num_threads(),
            "params": trainer.raw.param_counts(), "seconds_per_step": per_step, "samples_per_s": batch / per_step,
            "bf16_active": trainer.bf16}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--head", default="flow", choices=("flow", "regression"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(bench(args.preset, args.head, args.batch, args.latent, args.steps, args.precision,
                           args.checkpointing, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
