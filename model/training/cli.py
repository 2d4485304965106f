"""``latentfuse train --config FILE [--resume DIR]``: train a MoE-DiT (also under ``torchrun``);
``latentfuse train --recipe FILE``: build the bundled default model from its recipe (``model.training.recipe_cli``);
``latentfuse train-fidelity``: train a model's fidelity decoder (``model.training.fidelity``).

    latentfuse train --config configs/tiny_flow.toml
    latentfuse train --config configs/tiny_flow.toml --resume runs/tiny_flow
    torchrun --nproc_per_node 2 -m latentfuse.runtime.cli train --config configs/paper_flow.toml
    latentfuse train --recipe configs/recipes/default.toml [--work DIR --out DIR --reg-steps 8000 ...]
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from latentfuse.model.training.recipe_cli import add_run_arguments

    p = subparsers.add_parser("train", help="train a MoE-DiT (regression or flow head) from a TOML/YAML config, "
                                            "or build the default model from its recipe (--recipe)",
                              description="Train a MoE-DiT (MMAIF 3.4.1 losses, 4.2 hyper-parameters; FusionFM "
                                          "continual learning). Runs under torchrun for DistributedDataParallel. "
                                          "With --recipe: build the bundled default model (data, VAE, DiTs, fidelity "
                                          "decoder, evaluation, card) from its recipe, every stage kept in --work.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="training config (.toml, .yaml or .json); see configs/")
    which.add_argument("--recipe", help="the default model's recipe (configs/recipes/default.toml; keys: "
                                        "model/training/recipe.py)")
    p.add_argument("--resume", metavar="DIR", help="a checkpoint directory or a run directory to continue from")
    p.add_argument("--output-dir", help="override run.output_dir")
    p.add_argument("--steps", type=int, help="override optim.steps")
    add_run_arguments(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "train-fidelity", help="train a model's fidelity decoder on real pairs and write the model with it",
        description="Train the fidelity decoder (model.fidelity) of MODEL on the training scenes of real pairs: "
                    "degraded tuples with teacher labels, the model's own decoded images cached, then training; "
                    "every step resumes from --work. Writes MODEL's components plus the decoder to --out.")
    p.add_argument("--model", required=True, help="model directory whose DiTs and VAE make the decoder's input")
    p.add_argument("--data", required=True, help="real pairs, one folder per task (vif/ mef/ mff/)")
    p.add_argument("--work", required=True, help="folder for tuples, cache and checkpoints (resumable)")
    p.add_argument("--out", required=True, help="model directory to write (MODEL plus the decoder)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--source-grad-weight", type=float, default=1.5,
                   help="weight of the edge term on clean tuples: the output's Sobel magnitude towards the stronger "
                        "source's (default 1.5, the shipped decoder's; 0: label losses only)")
    p.add_argument("--edge-sources", choices=("clean", "all", "corruptions"), default="clean",
                   help="where the edge term looks: clean, on the tuples without degradations at their sources (the "
                        "shipped decoder's); all, on every tuple at its sources before degradation; corruptions, on "
                        "the clean tuples and those only rained, snowed, striped, JPEG'd or noised, at those")
    p.add_argument("--select-coarse", action="store_true",
                   help="the decoder chooses the coarse band's luma and colour among the sources and the VAE image too, "
                        "not only the finer bands' detail (model.fidelity FidelityConfig.select_coarse)")
    p.add_argument("--per-pair", type=int, default=6, help="degraded tuples per training pair")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run_train_fidelity)


def run_train(args: argparse.Namespace) -> int:
    from latentfuse.model.errors import LatentfuseError
    from latentfuse.model.training.recipe_cli import given_run_flags, run_recipe

    if args.recipe:
        wrong = [flag for flag, value in (("--resume", args.resume), ("--output-dir", args.output_dir),
                                          ("--steps", args.steps)) if value is not None]
        if wrong:
            raise LatentfuseError(f"{', '.join(wrong)} go(es) with --config; a --recipe run resumes from --work and "
                                  "writes --out")
        return run_recipe(args)
    wrong = given_run_flags(args)
    if wrong:
        raise LatentfuseError(f"{', '.join(wrong)} go(es) with --recipe, not --config")
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


def run_train_fidelity(args: argparse.Namespace) -> int:
    from latentfuse.model.training.fidelity import FidelityTrainConfig, run_fidelity_training
    from latentfuse.runtime.pipeline import Pipeline

    cfg = FidelityTrainConfig(steps=args.steps, batch_size=args.batch, crop=args.crop, lr=args.lr,
                              source_grad_weight=args.source_grad_weight, edge_sources=args.edge_sources)
    pipeline = Pipeline.from_pretrained(args.model, threads=args.threads)
    report = run_fidelity_training(args.model, args.data, args.work, args.out, cfg, pipeline,
                                   per_pair=args.per_pair, threads=args.threads, select_coarse=args.select_coarse)
    for task, row in report["validation"].items():
        print(f"{task}: PSNR to the label on held-aside training scenes {row['psnr_input']:.2f} dB (VAE image) -> "
              f"{row['psnr_output']:.2f} dB (fidelity decoder), {row['n']} tuples")
    print(f"wrote {args.out}")
    return 0
