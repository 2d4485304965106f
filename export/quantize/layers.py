"""What each Linear / Conv of a graph does (its role), and which of them a quantization level makes candidates."""

from __future__ import annotations

from latentfuse.export.quantize.options import LEVEL_ROLES


def layer_role(name: str, module) -> str:
    """The role of a quantizable module by its path in the graph wrapper (``dit.blocks.0.attn.qkv``)."""
    from torch import nn

    parts = name.split(".")
    leaf = parts[-1]
    if isinstance(module, nn.Conv2d):
        return "conv"
    if ".moe.experts." in name or ".moe.shared." in name:
        return "ffn"
    if leaf == "router":
        return "router"
    if leaf in ("qkv", "to_q", "to_k", "to_v"):
        return "qkv"
    if (leaf == "proj" and parts[-2:-1] == ["attn"]) or "to_out" in parts:
        return "attn_out"
    if "adaln" in parts or leaf == "film":      # the fidelity decoder's prompt FiLM: a modulation like AdaLN
        return "adaln"
    if any(p in ("x_embed", "cond_embed", "t_embed", "pos_embed", "prompt_proj") for p in parts):
        return "embed"
    if name.endswith("final.linear"):
        return "output"
    return "other"


def candidate_layers(module, level: str) -> dict[str, str]:
    """``{layer path: role}`` of every ``nn.Linear`` / ``nn.Conv2d`` of ``module`` that ``level`` quantizes."""
    from torch import nn

    roles = LEVEL_ROLES[level]
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            role = layer_role(name, sub)
            if role in roles:
                out[name] = role
    return out
