"""Elastic weight consolidation (Kirkpatrick et al. 2017, PNAS, "Overcoming catastrophic forgetting in
neural networks"), the regulariser of FusionFM's continual VIF → MEF → MFF training.

At the end of a task the diagonal Fisher information F_i ≈ E[(∂L/∂θ_i)²] is estimated on N batches
of that task, and the weights θ* are remembered. Training the next task adds

    L_ewc = λ/2 · Σ_i F_i (θ_i - θ*_i)²

Over several tasks the Fishers are summed and θ* is the latest anchor ("online EWC", Schwarz et al.
2018, with γ = 1), so one penalty covers every earlier task at constant memory.
"""

from __future__ import annotations

import torch
from torch import nn


class EWC:
    def __init__(self, lam: float):
        self.lam = float(lam)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.tasks = 0

    @property
    def active(self) -> bool:
        return self.lam > 0 and bool(self.fisher)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """λ/2 · Σ F (θ - θ*)² (a zero tensor before the first consolidation)."""
        params = dict(model.named_parameters())
        total = next(iter(params.values())).new_zeros((), dtype=torch.float32)
        if not self.active:
            return total
        for name, f in self.fisher.items():
            diff = params[name].float() - self.anchor[name]
            total = total + (f * diff * diff).sum()
        return 0.5 * self.lam * total

    @torch.no_grad()
    def consolidate(self, model: nn.Module, squared_grads: dict[str, torch.Tensor], batches: int) -> None:
        """Add a task's Fisher (``squared_grads`` summed over ``batches``) and re-anchor at θ."""
        for name, p in model.named_parameters():
            if not p.requires_grad or name not in squared_grads:
                continue
            f = squared_grads[name].float() / max(1, batches)
            self.fisher[name] = self.fisher[name] + f if name in self.fisher else f.clone()
            self.anchor[name] = p.detach().float().clone()
        self.tasks += 1

    def state_dict(self) -> dict:
        return {"lam": self.lam, "tasks": self.tasks,
                "fisher": {k: v.cpu() for k, v in self.fisher.items()},
                "anchor": {k: v.cpu() for k, v in self.anchor.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.tasks = int(state["tasks"])
        self.fisher = {k: v.to(device) for k, v in state["fisher"].items()}
        self.anchor = {k: v.to(device) for k, v in state["anchor"].items()}


def fisher_accumulator(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def accumulate_squared_grads(model: nn.Module, acc: dict[str, torch.Tensor]) -> None:
    """acc += g² for every parameter with a gradient (the empirical diagonal Fisher of one batch)."""
    for name, p in model.named_parameters():
        if name in acc and p.grad is not None:
            acc[name].add_(p.grad.float() ** 2)
