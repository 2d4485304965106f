"""The ``latentfuse`` command: one argparse CLI whose subcommands live next to the code they drive.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding its subcommands with
``set_defaults(func=handler)``. Handlers import heavy dependencies lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (  # in the order `latentfuse --help` lists them: use, deploy, build, inspect
    "latentfuse.runtime.fuse_cli",    # fuse, fuse-dir, demo
    "latentfuse.runtime.serve_cli",   # serve (Triton Inference Server)
    "latentfuse.export.cli",          # export
    "latentfuse.calibration.cli",     # calibrate
    "latentfuse.export.engines_cli",  # build-engines
    "latentfuse.model.data.cli",      # data synth | build
    "latentfuse.model.training.cli",  # train
    "latentfuse.model.training.tokenizer_cli",  # train-tokenizer
    "latentfuse.model.metrics.cli",   # metrics
    "latentfuse.bench.quality_cli",   # evaluate
    "latentfuse.model.cli",           # info
    "latentfuse.bench.cli",           # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentfuse",
        description="All-in-one degraded image fusion with a latent MoE diffusion transformer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from latentfuse.model.errors import LatentfuseError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LatentfuseError as err:
        print(f"latentfuse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"latentfuse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latentfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
