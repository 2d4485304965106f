"""2D rotary positional embedding (RoPE, Su et al. 2021; paper 3.3.2 "Rotary positional embedding").

The head dimension is split in two halves: the first rotates with the token's row index, the second
with its column index, each with the 1D RoPE frequencies ``base^(-2i/(d/2))``. Rotating queries and
keys makes attention scores depend only on the relative offset between two tokens. Tables are built
from ``torch.arange`` of the grid size inside ``forward``, so an exported graph follows H and W.
Prompt tokens are not rotated (equivalent to position (0, 0) on both axes).
"""

from __future__ import annotations

import torch


def rope_frequencies(dim: int, base: float, device=None) -> torch.Tensor:
    """Angular frequencies for one axis: ``dim/2`` values ``base^(-2i/dim)``."""
    exponents = torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim
    return base ** (-exponents)


def rope_2d_tables(grid_h: int, grid_w: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [gh·gw, head_dim/2] for row-major tokens (one angle per rotated pair)."""
    axis_dim = head_dim // 2
    freqs = rope_frequencies(axis_dim, base, device)                      # [axis_dim/2]
    rows = torch.arange(grid_h, device=device, dtype=torch.float32)
    cols = torch.arange(grid_w, device=device, dtype=torch.float32)
    ang_h = torch.outer(rows, freqs)                                      # [gh, axis_dim/2]
    ang_w = torch.outer(cols, freqs)                                      # [gw, axis_dim/2]
    ang = torch.cat(
        [
            ang_h[:, None, :].expand(grid_h, grid_w, -1),
            ang_w[None, :, :].expand(grid_h, grid_w, -1),
        ],
        dim=-1,
    ).reshape(grid_h * grid_w, axis_dim)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of ``x`` [B, heads, N, head_dim] by the table angles."""
    x_pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = x_pairs[..., 0], x_pairs[..., 1]
    out0 = x0 * cos - x1 * sin
    out1 = x0 * sin + x1 * cos
    return torch.stack((out0, out1), dim=-1).reshape(x.shape).to(x.dtype)
