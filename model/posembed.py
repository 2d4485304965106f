"""Per-block learnable absolute positional embedding (paper Eq. 5).

    pe_h = MLP([0, ..., h-1]),   pe_w = MLP([0, ..., w-1]),   pe = BroadcastAdd(pe_h, pe_w)

Computed once per forward from the token grid size and added to the features before every block
(the same ``pe`` is shared across blocks). Being a function of the integer positions rather than a
fixed table, it exists for any h, w, in eager PyTorch and in an exported graph.
"""

from __future__ import annotations

import torch
from torch import nn


class AxisMLP(nn.Sequential):
    """Scalar position -> hidden_size features."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class BlockPositionalEmbedding(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.mlp_h = AxisMLP(mlp_hidden, hidden_size)
        self.mlp_w = AxisMLP(mlp_hidden, hidden_size)

    def forward(self, grid_h: int, grid_w: int, device=None, dtype=None) -> torch.Tensor:
        """Return pe of shape [1, gh·gw, d] in row-major token order."""
        rows = torch.arange(grid_h, device=device, dtype=torch.float32)[:, None]
        cols = torch.arange(grid_w, device=device, dtype=torch.float32)[:, None]
        pe_h = self.mlp_h(rows.to(self.mlp_h[0].weight.dtype))          # [gh, d]
        pe_w = self.mlp_w(cols.to(self.mlp_w[0].weight.dtype))          # [gw, d]
        pe = pe_h[:, None, :] + pe_w[None, :, :]                          # BroadcastAdd -> [gh, gw, d]
        pe = pe.reshape(1, grid_h * grid_w, -1)
        return pe if dtype is None else pe.to(dtype)
