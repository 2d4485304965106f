"""``latentfuse train --config FILE [--resume DIR]``: train a MoE-DiT (also under ``torchrun``).

    latentfuse train --config configs/tiny_flow.toml
    latentfuse train --config configs/tiny_flow.toml --resume runs/tiny_flow
    torchrun --nproc_per_node 2 -m latentfuse.runtime.cli train --config configs/paper_flow.toml
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a MoE-DiT (regression or flow head) from a TOML/YAML config",
                              description="Train a MoE-DiT (MMAIF 3.4.1 losses, 4.2 hyper-parameters; FusionFM "
                                          "continual learning). Runs under torchrun for DistributedDataParallel.")
    p.add_argument("--config", required=True, help="training config (.toml, .yaml or .json); see configs/")
    p.add_argument("--resume", metavar="DIR", help="a checkpoint directory or a run directory to continue from")
    p.add_argument("--output-dir", help="override run.output_dir")
    p.add_argument("--steps", type=int, help="override optim.steps")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from latentfuse.model.training.config import TrainConfig
    from latentfuse.model.training.run import run_training

    cfg = TrainConfig.load(args.config)
    changes = {}
    if args.output_dir:
        changes.setdefault("run", {})["output_dir"] = args.output_dir
    if args.steps:
        changes.setdefault("optim", {})["steps"] = args.steps
    if changes:
        cfg = cfg.replace(**changes)
    trainer = run_training(cfg, resume=args.resume)
    if trainer.dist.is_main and trainer.history:
        last = trainer.history[-1]
        print(f"trained {cfg.model.head} DiT to step {trainer.step}: loss {last['loss']:.5f} "
              f"(main {last['main']:.5f}, aux {last['aux']:.5f}); outputs in {cfg.run.output_dir}")
    return 0
