"""Joint self-attention over image and prompt tokens, with 2D RoPE and the value residual (Eq. 6).

The prompt tokens P (projected to d) are concatenated to the image tokens in every block's
self-attention ("P is fed into the self-attention block to enable joint modeling", paper 3.3.2); only
the image tokens leave the block. Values follow the attention value residual of Eq. 6:

    V_l = (1 - η)·W_V X + η·V_{l-1}

with η a learnable scalar per block, initialised to 0 (so at init this is plain attention). The first
block has no V_{l-1}: it uses its own values and owns no η.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentfuse.model.rope import apply_rope


class JointAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, value_residual: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.eta = nn.Parameter(torch.zeros(())) if value_residual else None  # value-residual mix, Eq. 6

    def forward(
        self,
        image_tokens: torch.Tensor,             # [B, N, d]
        prompt_tokens: torch.Tensor,            # [B, L, d]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [N, head_dim/2]
        key_mask: torch.Tensor | None = None,   # [B, 1, 1, N+L] bool, True = attend
        prev_values: torch.Tensor | None = None,  # V_{l-1}: [B, heads, N+L, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = image_tokens.shape
        tokens = torch.cat([image_tokens, prompt_tokens], dim=1)
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.eta is not None and prev_values is not None:
            v = (1 - self.eta) * v + self.eta * prev_values
        cos, sin = rope
        # Rotate image tokens only; prompt tokens keep their features (identity rotation).
        q = torch.cat([apply_rope(q[:, :, :n], cos, sin), q[:, :, n:]], dim=2)
        k = torch.cat([apply_rope(k[:, :, :n], cos, sin), k[:, :, n:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        out = out[:, :, :n].transpose(1, 2).reshape(b, n, d)
        return self.proj(out), v
