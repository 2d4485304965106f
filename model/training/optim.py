"""AdamW with the cautious mask, and the cosine learning-rate schedule with linear warmup (MMAIF 4.2).

Cautious AdamW (Liang, Chen, Liu & Liu 2024, "Cautious Optimizers: Improving Training with One Line
of Code", Algorithm 2): the Adam update u = m̂ / (sqrt(v̂) + ε) is applied only where it agrees in
sign with the current gradient g, rescaled so the mean step size is kept:

    φ = 1[u ⊙ g > 0]                    per element
    θ ← θ - η·λ·θ                        decoupled weight decay (AdamW)
    θ ← θ - η · u ⊙ φ · numel(φ) / (Σφ + 1)

(the reference implementation's rescaling, per parameter tensor). With ``cautious=False`` the step is
torch's AdamW exactly. The optimizer state uses torch's AdamW keys (``step``, ``exp_avg``,
``exp_avg_sq``), so state dicts move between the two.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class CautiousAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with the cautious mask (Liang et al. 2024); ``cautious=False`` is AdamW."""

    def __init__(self, params, lr: float = 2e-4, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, cautious: bool = True):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         foreach=False, fused=False)
        self.cautious = bool(cautious)

    @torch.no_grad()
    def step(self, closure=None):
        if not self.cautious:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._cautious_group(group)
        return loss

    def _cautious_group(self, group) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = float(state["step"])
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1 = 1 - beta1 ** step
            bias2_sqrt = math.sqrt(1 - beta2 ** step)
            update = (exp_avg / bias1) / (exp_avg_sq.sqrt() / bias2_sqrt + eps)
            update.mul_(cautious_mask(update, grad))
            p.add_(update, alpha=-lr)


def cautious_mask(update: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """φ·numel/(Σφ + 1) with φ = 1[update·grad > 0]: zero sign-disagreeing components, keep the scale."""
    mask = (update * grad > 0).to(update.dtype)
    return mask * (mask.numel() / (mask.sum() + 1))


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear 0→1 over ``warmup_steps``, then cosine 1→``min_ratio`` at ``total_steps``."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(params, optim_cfg) -> CautiousAdamW:
    return CautiousAdamW(params, lr=optim_cfg.lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                         weight_decay=optim_cfg.weight_decay, cautious=optim_cfg.cautious)


def build_scheduler(optimizer, optim_cfg) -> LambdaLR:
    """torch ``LambdaLR`` with :func:`warmup_cosine` over the whole run (all continual tasks)."""
    return LambdaLR(optimizer, warmup_cosine(optim_cfg.warmup_steps, optim_cfg.steps, optim_cfg.min_lr_ratio))
