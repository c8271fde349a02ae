"""Exponential moving average of the identity module's weights (what gets exported)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- d * shadow + (1 - d) * live after every optimizer step, d = min(decay, (1 + k) / (10 + k))
    for the k-th update (a short warm-up, so early checkpoints are not dominated by the init)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(module).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow, live = list(self.shadow.parameters()), [p.detach().float() for p in module.parameters()]
        if len(shadow) != len(live):
            raise ValueError(f"EMA: the module has {len(live)} parameters, its shadow {len(shadow)}")
        torch._foreach_lerp_(shadow, live, 1.0 - d)  # one kernel launch for all parameters
        for s, b in zip(self.shadow.buffers(), module.buffers(), strict=True):
            s.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = int(state["updates"])
