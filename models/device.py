"""The one device and dtype rule of every command, and the CUDA allocator setting they ask for.

    device = pick_device("auto")            # cuda when available, else cpu
    dtype = pick_dtype("auto", device)      # bfloat16 on CUDA, float32 on the CPU

"auto" is the fast path's precision: it samples in bfloat16 on CUDA. The reference code's
precision (float32 weights under float16 autocast) is not an "auto" rule but an explicit mode,
`models.execution.Execution.reference`.
"""

from __future__ import annotations

import os

import torch

from .errors import UserError

ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the older name, and the newer
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(name: str | None) -> torch.device:
    """None or "auto": cuda when available, else cpu; any other name as torch.device reads it."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """None or "auto": bfloat16 on CUDA, float32 on the CPU; else one of `DTYPES` (fp32, bf16, ...)."""
    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}", hint=f"use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def prefer_expandable_segments() -> bool:
    """Ask PyTorch's CUDA allocator for expandable segments, unless the user configured it.

    Segments then grow in place instead of leaving fixed-size blocks partly used, which is most of
    the gap between what sampling allocates and what it reserves: less memory reserved at the same
    speed (docs/performance.md, "Memory"). The allocator reads its configuration once, at the first
    CUDA allocation, so this must run before that; an empty PYTORCH_CUDA_ALLOC_CONF keeps PyTorch's
    default. Returns whether it set the variable.
    """
    if any(v in os.environ for v in ALLOC_CONF_VARS) or torch.cuda.is_initialized():
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    return True
