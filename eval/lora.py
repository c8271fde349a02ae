"""LoRA for the UViT's linear layers: the low-rank fine-tuning of the per-identity baseline.

    lora = add_lora(uvit, rank=8, alpha=8)        # uvit's block linears now carry trainable A, B
    ...train lora.parameters()...
    merge_lora(uvit)                              # W += (alpha / r) B A; plain nn.Linear again

Each wrapped layer computes

    y = x W^T + b + (alpha / r) * (x A^T) B^T      A [r, in] ~ N(0, 1 / r), B [out, r] = 0

so a freshly wrapped model computes exactly what it did before (B starts at zero). Only the
transformer blocks' linears are wrapped (attention qkv and output projection, the MLP's fc1 and
fc2, the out-blocks' skip linears), LoRA's usual targets; embeddings, heads and norms stay as
they are. After training, `merge_lora` folds the update into the base weights, so the fine-tuned
backbone is a plain models.uvit.UViT that every sampling path (fast path, CUDA graphs) runs as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("qkv", "proj", "fc1", "fc2", "skip_linear")  # attribute names of the wrapped linears


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update (see the module docstring).

    x [..., in_features] -> [..., out_features]. `weight` and `bias` are the base layer's, so code
    that reads them (e.g. models.uvit.Mlp's fused inference path) sees the base weights; that path
    runs only without gradients, after `merge_lora`.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        p = base.weight
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, device=p.device, dtype=torch.float32)
                                   / math.sqrt(rank))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=p.device, dtype=torch.float32))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta(self) -> torch.Tensor:
        """The update of the weight, [out, in] float32: scale * B A."""
        return self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x.to(self.lora_a.dtype) @ self.lora_a.t()) @ self.lora_b.t()
        return self.base(x) + (self.scale * update).to(x.dtype)


def _targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, linear) of every wrapped layer: TARGETS inside the UViT's blocks."""
    blocks = [*model.in_blocks, model.mid_block, *model.out_blocks]
    found = []
    for block in blocks:
        for parent in block.modules():
            for name in TARGETS:
                child = getattr(parent, name, None)
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 8.0, seed: int = 0) -> nn.ModuleList:
    """Freeze `model` (a models.uvit.UViT) and wrap its blocks' linears in LoRALinear, in place.

    A matrices are drawn from a CPU generator seeded with `seed` (the same adapters whatever the
    device). Returns the wrappers as a ModuleList (their `lora_a` / `lora_b` are the trainable
    parameters; `lora_state_dict` saves them).
    """
    model.requires_grad_(False)
    wrappers = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for parent, name, linear in _targets(model):
            wrapper = LoRALinear(linear, rank, alpha)
            setattr(parent, name, wrapper)
            wrappers.append(wrapper)
    if not wrappers:
        raise ValueError("no linear layer to adapt: is this a models.uvit.UViT?")
    return nn.ModuleList(wrappers)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRALinear's update into its base weight and put the plain nn.Linear back, in place;
    returns `model` (now without LoRA modules)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                base = child.base
                base.weight.add_(child.delta().to(base.weight.dtype))
                setattr(parent, name, base)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA matrices of a model `add_lora` wrapped."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]
