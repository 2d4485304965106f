"""MoE GLU feed-forward (paper 3.3.2 "Mixture-of-experts", DeepSeek-V3 style; Shazeer 2020 GLU).

Each token goes to the top-k (2) of E (4) routed GLU experts, weighted by its renormalised router
probabilities, plus one shared expert that sees every token:

    y = Σ_s Shared_s(x) + Σ_{e ∈ topk(x)} g_e(x)·Expert_e(x),   g = softmax(W_r x) renormalised over top-k

Three numerically identical dispatch forms (they differ only by float summation order, ~1e-7):
- ``sparse``: gather each expert's tokens, run the expert on them, scatter-add back (training, eager);
- ``dense``: run every expert on every token and mask with the top-k weights (zeros elsewhere). No
  data-dependent shapes (no nonzero / boolean indexing / scatter-add), so it exports to a
  TensorRT-safe ONNX graph; it computes E/k times the routed-expert FLOPs of the others.
- ``grouped``: the selected experts only, with static shapes, and exact (no capacity, no dropped
  token, for any routing). The T·k routing slots are laid out expert by expert in a padded buffer of
  ``blocks = E·(m+1) - 1`` blocks of ``block = ceil(T·k / (E·m))`` rows (m = ``blocks_per_expert``),
  each expert's slots padded to a whole number of blocks: Σ_e ceil(n_e/block) < T·k/block + E ≤ E·(m+1)
  whatever the counts n_e, so every slot has a row. Each block is run by the expert that owns it
  with one batched matmul against that expert's gathered weights (grouped GEMM, MegaBlocks-style),
  and each slot's row is gathered back and weighted. Rows computed: blocks·block ≈ T·k·(m+1)/m,
  against E·T for ``dense``. Slot positions come from a one-hot cumsum (float, exact below 2^24
  tokens), rows from ScatterElements without reduction and Gather: every shape follows from T alone,
  so it exports TensorRT-safe too. Its price is a copy of the owning expert's weights per block and
  ~20 small index ops per layer, so it pays only with many tokens and wide experts: each preset
  exports the form measured faster (``DiTConfig.export_moe_dispatch``, ``scripts/bench_moe_dispatch.py``).
  :data:`~latentfuse.model.config.EXPORT_DISPATCHES` are the forms a graph may use.

The load-balancing loss is Switch-Transformer style, E·Σ_e f_e·P_e, with f_e the fraction of routing
slots that went to expert e and P_e the mean router probability of e; it is 1 (its minimum) for a
uniform router.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentfuse.model.config import DISPATCHES

BLOCKS_PER_EXPERT = 4                         # m of the grouped form: padding <= T·k/m rows


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
                 dispatch: str = "sparse", blocks_per_expert: int = BLOCKS_PER_EXPERT):
        super().__init__()
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        self.num_experts = num_experts
        self.blocks_per_expert = blocks_per_expert
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
        dispatch = dispatch or self.dispatch
        if dispatch == "dense":
            for e, expert in enumerate(self.experts):
                out = out + weights[:, e:e + 1] * expert(flat)
        elif dispatch == "grouped":
            out = out + self._grouped(flat, top_i, weights.gather(1, top_i))
        elif dispatch == "sparse":
            for e, expert in enumerate(self.experts):
                rows = (top_i == e).any(dim=-1).nonzero(as_tuple=True)[0]
                if rows.numel() == 0:
                    continue
                contribution = weights[rows, e:e + 1] * expert(flat[rows])
                out = out.index_add(0, rows, contribution)
        else:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        return out.reshape(shape), load_balancing_loss(probs, top_i, self.num_experts)

    def grouped_layout(self, tokens: int) -> tuple[int, int]:
        """(blocks, rows per block) of the grouped form for ``tokens`` tokens: static shape arithmetic."""
        per = self.num_experts * self.blocks_per_expert
        block = (tokens * self.top_k + per - 1) // per
        return self.num_experts * (self.blocks_per_expert + 1) - 1, block

    def _grouped(self, flat: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """Σ_j top_w[t, j]·Expert_{top_i[t, j]}(x_t) over the selected experts only; flat [T, d],
        top_i / top_w [T, k]. See the module docstring for the layout."""
        tokens, d = flat.shape
        k, num_e = self.top_k, self.num_experts
        blocks, block = self.grouped_layout(tokens)
        device = flat.device
        slot_expert = top_i.reshape(-1)                                        # [S], S = T·k
        experts = torch.arange(num_e, device=device)
        onehot = (slot_expert[:, None] == experts[None, :]).to(torch.float32)  # [S, E]
        # rank of each slot among its expert's slots (float cumsum: TensorRT's CumSum is float only)
        rank = onehot.cumsum(0).gather(1, slot_expert[:, None]).squeeze(1).to(torch.int64) - 1
        counts = onehot.sum(0).to(torch.int64)                                  # [E]
        # each expert's slots padded to whole blocks: block·#{j : j·block < n_e} = block·ceil(n_e / block),
        # by comparisons (integer division lowers to float Div / Floor or to sign logic on BOOLs)
        block_start = torch.arange(blocks, device=device) * block
        padded = (block_start[:, None] < counts[None, :]).to(torch.int64).sum(0) * block
        earlier = (experts[:, None] > experts[None, :]).to(torch.int64)        # [E, E] strictly lower
        start = (earlier * padded[None, :]).sum(1)                              # exclusive cumsum [E]
        dest = start.gather(0, slot_expert) + rank                              # row of each slot [S]
        slot_token = torch.arange(tokens, device=device)[:, None].expand(tokens, k).reshape(-1)
        rows = blocks * block
        source = torch.zeros(rows, dtype=torch.int64, device=device).scatter(0, dest, slot_token)
        owner = (block_start[:, None] >= (start + padded)[None, :]).to(torch.int64).sum(1)
        owner = torch.minimum(owner, torch.full_like(owner, num_e - 1))         # unused tail blocks
        # per-block expert weights [blocks, in, out]; gate and up stay two matmuls (a Split costs more)
        w_gate, w_up, w_down = (torch.stack([getattr(e, name).weight.t() for e in self.experts]).index_select(0, owner)
                                for name in ("gate", "up", "down"))
        x = flat.index_select(0, source).reshape(blocks, block, d)
        y = torch.bmm(F.silu(torch.bmm(x, w_gate)) * torch.bmm(x, w_up), w_down).reshape(rows, d)
        picked = y.index_select(0, dest) * top_w.reshape(-1, 1).to(y.dtype)    # [S, d]
        return picked.reshape(tokens, k, d).sum(1)
