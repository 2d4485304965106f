"""MoE GLU feed-forward (paper 3.3.2 "Mixture-of-experts", DeepSeek-V3 style; Shazeer 2020 GLU).

Each token goes to the top-k (2) of E (4) routed GLU experts, weighted by its renormalised router
probabilities, plus one shared expert that sees every token:

    y = Σ_s Shared_s(x) + Σ_{e ∈ topk(x)} g_e(x)·Expert_e(x),   g = softmax(W_r x) renormalised over top-k

Two numerically identical dispatch forms:
- ``sparse``: gather each expert's tokens, run the expert on them, scatter-add back (training, eager);
- ``dense``: run every expert on every token and mask with the top-k weights (zeros elsewhere). No
  data-dependent shapes (no nonzero / boolean indexing / scatter-add), so it exports to a
  TensorRT-safe ONNX graph.

The load-balancing loss is Switch-Transformer style, E·Σ_e f_e·P_e, with f_e the fraction of routing
slots that went to expert e and P_e the mean router probability of e; it is 1 (its minimum) for a
uniform router.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GLUExpert(nn.Module):
    """SwiGLU feed-forward: W_down(silu(W_gate x) ⊙ W_up x)."""

    def __init__(self, hidden_size: int, inner: int):
        super().__init__()
        self.gate = nn.Linear(hidden_size, inner, bias=False)
        self.up = nn.Linear(hidden_size, inner, bias=False)
        self.down = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def load_balancing_loss(router_probs: torch.Tensor, topk_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E·Σ_e f_e·P_e over all tokens; router_probs [T, E], topk_index [T, k]."""
    slots = F.one_hot(topk_index, num_experts).to(router_probs.dtype).sum(dim=1)  # [T, E]
    fraction = slots.mean(dim=0) / topk_index.shape[-1]
    mean_prob = router_probs.mean(dim=0)
    return num_experts * torch.sum(fraction * mean_prob)


class MoEGLU(nn.Module):
    def __init__(self, hidden_size: int, inner: int, num_experts: int, top_k: int, num_shared: int,
                 dispatch: str = "sparse"):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.dispatch = dispatch
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(GLUExpert(hidden_size, inner) for _ in range(num_experts))
        self.shared = nn.ModuleList(GLUExpert(hidden_size, inner) for _ in range(num_shared))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (router probs [T, E], top-k indices [T, k], dense combine weights [T, E])."""
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_i, top_w)  # plain scatter: static shape
        return probs, top_i, weights

    def forward(self, x: torch.Tensor, dispatch: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, d] -> (y [B, N, d], load-balancing loss)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs, top_i, weights = self.route(flat)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        for expert in self.shared:
            out = out + expert(flat)
        if (dispatch or self.dispatch) == "dense":
            for e, expert in enumerate(self.experts):
                out = out + weights[:, e:e + 1] * expert(flat)
        else:
            for e, expert in enumerate(self.experts):
                rows = (top_i == e).any(dim=-1).nonzero(as_tuple=True)[0]
                if rows.numel() == 0:
                    continue
                contribution = weights[rows, e:e + 1] * expert(flat[rows])
                out = out.index_add(0, rows, contribution)
        return out.reshape(shape), load_balancing_loss(probs, top_i, self.num_experts)
