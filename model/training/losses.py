"""The training losses of MMAIF section 3.4.1.

    L_reg  = ||f_θ(Z_a, Z_b, P) - Z_GT||²₂                                   (Eq. 8)
    L_flow = E_{t, Z0~p0} ||v_θ(Z_t, t, Z_a, Z_b, P) - (Z1 - Z0)||²₂,  Z1 = Z_GT   (Eq. 11; t=0 prior, t=1 data)
    L_aux  = Σ_i ||X̃ - X_i||₁ + ||∇X̃ - ∇X_i||₁  over the two source images X_i  (Eq. 9)
    L      = L_reg|flow + λ·L_aux (+ w_lb·L_balance of the MoE router)          (Eq. 10)

and one term the paper does not have, off by default (``loss.label_weight``):

    L_label = ||X̃ - X_GT||₁ + ||∇X̃ - ∇X_GT||₁   the label in pixel space, through the frozen decoder

Eq. 8/11 supervise latents, so a decoder that blurs (a small VAE trained from scratch) caps the edges
of every fused image at those of D(E(X_GT)); a pixel-space term on the label lets the DiT choose
latents that the decoder renders sharper, the way Eq. 9 already reaches through the decoder.

X̃ = D(Z̃) is decoded by the frozen VAE decoder; for the flow head Z̃ = Z̃1 = Z_t + (1-t)·v_θ, the data
point the predicted velocity points at (3.4.1 "converting the predicted velocity into a predicted Z̃1").
Every norm is a mean over elements and batch items, so a loss is the same whether a batch is seen
whole or split over data-parallel processes (DDP averages gradients over equal shards).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentfuse.model import flow as fm


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences (∂x, ∂y) of a [B, C, H, W] image: the ∇ of Eq. 9."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def per_sample_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(dim=1)


def aux_fusion_loss(fused: torch.Tensor, sources: list[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9 on [-1, 1] images [B, 3, H, W]: Σ_i ||X̃ - X_i||₁ + ||∇X̃ - ∇X_i||₁ (batch mean).

    ``weights`` [B] (0/1) restricts the loss to some batch items (the flow head's aux_min_t); the mean
    stays over the whole batch so it is additive over data-parallel shards.
    """
    gx, gy = image_gradients(fused)
    per = torch.zeros(fused.shape[0], device=fused.device, dtype=torch.float32)
    for src in sources:
        sx, sy = image_gradients(src)
        per = per + per_sample_l1(fused.float(), src.float())
        per = per + per_sample_l1(gx.float(), sx.float()) + per_sample_l1(gy.float(), sy.float())
    if weights is not None:
        per = per * weights
    return per.mean()


def label_loss(fused: torch.Tensor, label: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_label on [-1, 1] images [B, 3, H, W]: ||X̃ - X_GT||₁ + ||∇X̃ - ∇X_GT||₁ (batch mean, like Eq. 9)."""
    gx, gy = image_gradients(fused.float())
    lx, ly = image_gradients(label.float())
    per = per_sample_l1(fused.float(), label.float()) + per_sample_l1(gx, lx) + per_sample_l1(gy, ly)
    if weights is not None:
        per = per * weights
    return per.mean()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float())


def flow_inputs(z_gt, z_a, z_b, t, eps, prior: str, prior_sigma: float):
    """(Z_t, target velocity) for Eq. 11: Z0 = μ0 + σ0·ε from the prior p0, Z1 = Z_GT."""
    z0 = fm.draw_prior(prior, eps, z_a, z_b, prior_sigma)
    return fm.interpolate(z0, z_gt, t), fm.target_velocity(z0, z_gt)
