"""``latentfuse train-tokenizer``: retrain (or ``--check``) the shipped prompt tokenizer
(:mod:`latentfuse.model.training.tokenizer`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from latentfuse.model.training import tokenizer  # light: sentencepiece is imported when it trains

    p = subparsers.add_parser("train-tokenizer", help="retrain the shipped prompt tokenizer on the prompt corpus",
                              description=tokenizer.__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=tokenizer.DEFAULT_OUT, help="where to write spiece.model")
    p.add_argument("--vocab-size", type=int, default=tokenizer.DEFAULT_VOCAB_SIZE)
    p.add_argument("--check", action="store_true", help="only verify that retraining reproduces --out")
    p.set_defaults(func=lambda args: tokenizer.train_tokenizer(args.out, args.vocab_size, args.check))
