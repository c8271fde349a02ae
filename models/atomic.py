"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))   any writer that takes a path
    write_text_atomic(path, text)
    write_json_atomic(path, data)                                  NaN -> null, numpy scalars, paths
    fsync_dir(folder)                                              after renaming something into it
    replace_folder(tmp, final, aside)                              a folder assembled in tmp, put in place

A reader never sees a half-written file, and a failed or killed write leaves the previous file
intact. The temporary file is named `.<name>.<random>.tmp`, so `.<name>.*.tmp` finds leftovers of a
killed process. Folders that must appear whole (training checkpoints, side folders) are assembled in a
temporary folder and put in place with `replace_folder`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`.

    Parent folders are created. The temporary file is removed when `write` fails. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash cannot leave an empty file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a crash. A no-op where
    folders cannot be opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike, aside: str | os.PathLike) -> Path:
    """Put the folder assembled in `tmp` in place of `final`: its files are flushed to disk, an existing
    `final` is renamed to `aside` first and deleted only once `tmp` is in place (so a crash between the
    two renames leaves `aside`, a complete folder, for the reader to fall back on), and the rename is
    flushed to the parent folder. Returns `final`."""
    tmp, final, aside = Path(tmp), Path(final), Path(aside)
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; parent folders are created."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no spelling for them), numpy scalars Python numbers,
    paths strings, tuples lists, dict keys strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `data` as JSON (json_safe first, a final newline) to `path` atomically."""
    text = json.dumps(json_safe(data), indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")
