"""Atomic file writes for result files: a temporary file beside the target, then os.replace.

A reader never sees a half-written JSON, and a killed run leaves the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from models.weights import atomic_write


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; parent folders are created."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (JSON has no spelling for them); numpy scalars become Python."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write `data` as JSON atomically (NaN -> null, numpy scalars and paths converted)."""
    return write_text_atomic(path, json.dumps(_json_safe(data), indent=indent, ensure_ascii=False) + "\n")
