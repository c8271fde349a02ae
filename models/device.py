"""The one device and dtype rule of every command, and the CUDA allocator setting they ask for.

    device = pick_device("auto")            # cuda when available, else cpu
    device = pick_device("cuda")            # DeviceError (a UserError) naming the devices here if none
    dtype = pick_dtype("auto", device)      # bfloat16 on CUDA, float32 on the CPU
    dtype = pick_dtype("fastest", device)   # bfloat16 also on CPUs with native bfloat16
    require_gpu("python -m eval.bench.levers")   # GPU-only tools: one clear line on a machine without one

"auto" is the fast path's precision: it samples in bfloat16 on CUDA. The reference code's
precision (float32 weights under float16 autocast) is not an "auto" rule but an explicit mode,
`models.execution.Execution.reference`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError

ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the older name, and the newer
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class DeviceError(UserError):
    """A device that does not exist here (a misspelt name, CUDA without a GPU, a GPU index too high)."""


def available_devices() -> list[str]:
    """The devices this machine offers PyTorch: cpu, then cuda:0, cuda:1, ..., then mps if present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def pick_device(name: str | None) -> torch.device:
    """None or "auto": cuda when available, else cpu; else cpu, cuda, cuda:N or mps, checked to exist.

    Never falls back silently: a device that is not here raises DeviceError naming the ones that are.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = available_devices()
    hint = f"devices here: {', '.join(here)}; pass one of them, or auto"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {name!r}", hint=hint) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU on this machine",
                              hint=hint)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} "
                              "CUDA GPU(s)", hint=hint)
        return device
    if device.type == "mps" and "mps" in here:
        return device
    raise DeviceError(f"device {name!r} is not available here", hint=hint)


def require_gpu(tool: str) -> torch.device:
    """torch.device("cuda") for a tool that only makes sense on a GPU; a UserError naming `tool` when
    PyTorch sees none (before any CUDA call could end in a traceback)."""
    if not torch.cuda.is_available():
        raise DeviceError(f"{tool} needs a CUDA GPU, and PyTorch sees none on this machine "
                          f"(devices here: {', '.join(available_devices())})",
                          hint="run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch")
    return torch.device("cuda")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """None or "auto": bfloat16 on CUDA, float32 on the CPU; "fastest": bfloat16 also on CPUs that compute
    it natively (fastest_dtype_name); else one of `DTYPES` (fp32, bf16, ...)."""
    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name == "fastest":
        return DTYPES[fastest_dtype_name(device)]
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}", hint=f"use auto, fastest or one of {sorted(DTYPES)}")
    return DTYPES[name]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, as Linux lists its flags).
    Elsewhere PyTorch emulates bfloat16 matrix work, several times slower than float32 (docs/demo.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fastest_dtype_name(device: torch.device) -> str:
    """The dtype name (of `DTYPES`) that samples fastest here: "bf16" on CUDA and on CPUs with native
    bfloat16, else "fp32"."""
    return "bf16" if torch.device(device).type == "cuda" or cpu_has_native_bf16() else "fp32"


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
