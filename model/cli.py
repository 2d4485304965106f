"""``latentfuse info``: parameter counts of a DiT preset or checkpoint."""

from __future__ import annotations

import argparse
import json

# The paper's reported sizes (MMAIF 4.2) for the `paper` preset comparison.
PAPER_TOTAL = 282_000_000
PAPER_ACTIVE = 185_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print total and active-per-token parameter counts of a DiT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny", help="preset name (model/presets/*.json)")
    src.add_argument("--checkpoint", help="a MoEDiT checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--head", choices=("flow", "regression"), help="override the preset's head")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def model_info(preset: str | None = None, checkpoint: str | None = None, head: str | None = None) -> dict:
    import torch

    from latentfuse.model.config import DiTConfig
    from latentfuse.model.dit import MoEDiT

    if checkpoint:
        cfg = DiTConfig.from_json(f"{checkpoint}/config.json")
        source = checkpoint
    else:
        cfg = DiTConfig.from_preset(preset or "tiny")
        source = f"preset:{preset or 'tiny'}"
    if head:
        cfg = cfg.replace(head=head)
    with torch.device("meta"):  # counts only: no memory, no init time
        counts = MoEDiT(cfg).param_counts()
    info = {"source": source, "config": cfg.to_dict(), "total_params": counts["total"], "active_params": counts["active"]}
    if source == "preset:paper":
        info["paper_reported"] = {"total_params": PAPER_TOTAL, "active_params": PAPER_ACTIVE}
        info["relative_to_paper"] = {
            "total": counts["total"] / PAPER_TOTAL - 1.0,
            "active": counts["active"] / PAPER_ACTIVE - 1.0,
        }
    return info


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args.preset, args.checkpoint, args.head)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"{info['source']}  head={cfg['head']}  depth={cfg['depth']}  hidden={cfg['hidden_size']}  "
          f"heads={cfg['num_heads']}  experts={cfg['num_experts']}+{cfg['num_shared_experts']} (top-{cfg['top_k']})")
    print(f"total parameters : {info['total_params'] / 1e6:10.2f} M")
    print(f"active per token : {info['active_params'] / 1e6:10.2f} M")
    if "relative_to_paper" in info:
        rel = info["relative_to_paper"]
        print(f"paper (MMAIF 4.2): 282 M total ({rel['total']:+.1%}), 185 M active ({rel['active']:+.1%})")
    return 0
