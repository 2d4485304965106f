"""Image-based LoRA-AdaLN conditioning (paper Eq. 3, 4 and 7).

DiT's adaLN maps the condition c to six modulations with one MLP (Eq. 4). Here c is per token (the
patchified degraded latents, plus the timestep for the flow head), so the d -> 6d projection runs on
every token; MMAIF factorises it through a rank-d' bottleneck (Eq. 7):

    α1, β1, γ1, α2, β2, γ2 = MLP2(MLP1(c)),   MLP1: d -> d',   MLP2: d' -> 6d

MLP2 is zero-initialised (adaLN-Zero): every block starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN(X, β, γ) = (1 + γ)·X + β on an already normalised X (Eq. 3, zero-init friendly)."""
    return x * (1 + scale) + shift


class LoRAAdaLN(nn.Module):
    """Per-token modulations from the condition through a rank-``rank`` bottleneck (Eq. 7)."""

    def __init__(self, hidden_size: int, rank: int, num_modulations: int):
        super().__init__()
        self.num_modulations = num_modulations
        self.mlp1 = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, rank))
        self.mlp2 = nn.Sequential(nn.SiLU(), nn.Linear(rank, num_modulations * hidden_size))
        nn.init.zeros_(self.mlp2[1].weight)
        nn.init.zeros_(self.mlp2[1].bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond [B, N, d] -> ``num_modulations`` tensors [B, N, d]."""
        return self.mlp2(self.mlp1(cond)).chunk(self.num_modulations, dim=-1)


class NormNoAffine(nn.LayerNorm):
    """LayerNorm without its own affine parameters: AdaLN supplies scale and shift."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, elementwise_affine=False, eps=1e-6)
