"""Patchify / unpatchify latents with patch size p (DiT, paper 3.3.1).

A latent of shape [B, z, h, w] becomes h·w/p² tokens of p²·z features, in row-major token order
(token index = row·(w/p) + col), which is the order RoPE and the per-block PE assume.
"""

from __future__ import annotations

import torch

from latentfuse.model.errors import LatentfuseError


def check_latent(name: str, latent: torch.Tensor, channels: int, patch_size: int) -> None:
    """Clear errors for latents the DiT cannot take (skipped while tracing for export)."""
    if latent.dim() != 4:
        raise LatentfuseError(f"{name} must be a 4-D latent [B, C, h, w], got shape {tuple(latent.shape)}")
    _, c, h, w = latent.shape
    if c != channels:
        raise LatentfuseError(f"{name} has {c} channels but the model expects {channels} (latent_channels of its preset)")
    if h % patch_size or w % patch_size:
        raise LatentfuseError(
            f"{name} latent size {h}x{w} is not a multiple of the patch size {patch_size} "
            f"(images must be padded to a multiple of {8 * patch_size} pixels)"
        )
    if not latent.is_floating_point():
        raise LatentfuseError(f"{name} must be a floating-point tensor, got {latent.dtype}")


def patchify(latent: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/p)·(w/p), p·p·C]."""
    b, c, h, w = latent.shape
    p = patch_size
    x = latent.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # B, h/p, w/p, p, p, C
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """[B, gh·gw, p·p·C] -> [B, C, gh·p, gw·p] (inverse of :func:`patchify`)."""
    b, _, d = tokens.shape
    p = patch_size
    c = d // (p * p)
    x = tokens.reshape(b, grid_h, grid_w, p, p, c)
    x = x.permute(0, 5, 1, 3, 2, 4)  # B, C, gh, p, gw, p
    return x.reshape(b, c, grid_h * p, grid_w * p)
