"""A pixel-space MoE-DiT with the parameter count of the latent one: the control that isolates the
effect of working in latent space (MMAIF 4.6.4: "Our framework operates in the latent space,
significantly reducing the overhead of DiT").

Same :class:`latentfuse.model.dit.MoEDiT` code, but its "latents" are the RGB images themselves
(``latent_channels=3``) patchified with a pixel-space ViT patch size (default 8: an 8x8x3 patch; the
latent DiT's 2x2 patch of an f=8 latent covers 16x16 pixels, so p=8 gives 4x its tokens, p=16 the
same count without any VAE). The bigger patch embedding / output projection change the parameter
count slightly; :func:`pixel_dit_config` re-balances it by picking the expert width whose total is
closest to the latent DiT's, so both models hold (within a fraction of a percent) the same weights.
"""

from __future__ import annotations

from latentfuse.model.config import DiTConfig
from latentfuse.model.errors import LatentfuseError

RGB = 3
DEFAULT_PATCH = 8


def dit_param_count(cfg: DiTConfig) -> int:
    """Total parameters of ``MoEDiT(cfg)``, without building it (counted on the meta device)."""
    import torch

    from latentfuse.model.dit import MoEDiT

    with torch.device("meta"):
        return sum(p.numel() for p in MoEDiT(cfg).parameters())


def pixel_dit_config(latent: DiTConfig, patch_size: int = DEFAULT_PATCH, match_params: bool = True) -> DiTConfig:
    """The pixel-space twin of ``latent``: RGB input, ``patch_size`` pixels per patch side, and (with
    ``match_params``) the expert width that brings the total parameter count closest to the latent DiT's."""
    if patch_size < 1:
        raise LatentfuseError(f"pixel DiT patch size must be >= 1, got {patch_size}")
    cfg = latent.replace(latent_channels=RGB, patch_size=int(patch_size))
    if not match_params:
        return cfg
    target = dit_param_count(latent)
    # Total parameters are affine in expert_hidden: two evaluations give the slope, then round.
    base = dit_param_count(cfg)
    slope = dit_param_count(cfg.replace(expert_hidden=cfg.expert_hidden + 1)) - base
    hidden = max(1, round(cfg.expert_hidden + (target - base) / slope)) if slope else cfg.expert_hidden
    return cfg.replace(expert_hidden=int(hidden))
