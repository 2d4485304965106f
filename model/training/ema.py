"""Exponential moving average of the weights (Polyak averaging; the EMA every diffusion trainer keeps).

    θ_ema ← decay·θ_ema + (1 - decay)·θ        after every optimizer step

Kept in float32 next to the model; saved in the trainer state and exported as its own DiT directory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - self.decay)

    def copy_to(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` carrying the averaged weights."""
        averaged = copy.deepcopy(model)
        state = averaged.state_dict()
        averaged.load_state_dict({k: self.shadow[k].to(v.dtype) if k in self.shadow else v for k, v in state.items()})
        return averaged

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict, device="cpu") -> None:
        self.shadow = {k: v.to(device) for k, v in state["shadow"].items()}
