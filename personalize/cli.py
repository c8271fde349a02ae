"""Shared command-line plumbing for train.py and sample.py: device/dtype choice, clean errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

EXIT_USER_ERROR = 2


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


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run main; the project's known user-facing errors print one clear line and exit 2."""
    from encoder.face_analysis import FaceRejected
    from encoder.photos import PhotoError
    from models.paths import WeightsError
    from personalize.extract import NoUsablePhotos
    from personalize.prompts import PromptFileError
    from personalize.record import RecordError

    try:
        return main(argv)
    except (WeightsError, RecordError, PromptFileError, NoUsablePhotos, PhotoError, FaceRejected,
            FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        return 130
