"""Shared command-line plumbing for train.py and sample.py: device/dtype choice."""

from __future__ import annotations

import os

import torch

ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the older name, and the newer


def prefer_expandable_segments() -> bool:
    """Ask PyTorch's CUDA allocator for expandable segments, unless the user configured it.

    Segments then grow in place instead of leaving fixed-size blocks partly used, which is most of
    the gap between what sampling allocates and what it reserves. On an H100 (eval/results/
    sample_h100.json, run 11) sampling ran at the same speed with peak reserved memory 4.06 ->
    3.55 GB (`sample_bench`, CUDA graphs) and 4.24 -> 3.74 GB (one prompt). The allocator reads
    its configuration once, at the first CUDA allocation, so this must run before that; an empty
    PYTORCH_CUDA_ALLOC_CONF keeps PyTorch's default. Returns whether it set the variable.
    """
    if any(v in os.environ for v in ALLOC_CONF_VARS) or torch.cuda.is_initialized():
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return True


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA, float32 on the CPU."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]
