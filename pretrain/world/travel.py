"""A world run, packed for the next machine: what `scripts/world.sh` needs to go on, in pieces under FILE_LIMIT.

    python -m pretrain.world pack --out runs/world --world checkpoints/world --to DIR
    cat DIR/world_state.tar.* | tar -x          # on the next machine, in the folder the paths were given from

A time-limited GPU host gives back only a few files of at most 16 MiB, and what is carried to the next one counts
against a small limit, so the pack holds no more than a rerun reads (each stage's `left_behind` names the rest):
- the world folder (every export so far);
- a stage of steps that has not finished: its checkpoint folder whole (weights and any optimizer state);
- a finished one: its state.json alone (a rerun reads no more of it when its exports are in place,
  pretrain.world.common.run_stage);
- the identity stage: its pretraining run without the shards (a rerun writes them again only while the module is
  not exported), and without the run's checkpoints once it is;
- everything else under the runs folder (logs, sample sheets).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from models.errors import UserError
from pretrain.world.common import FILE_LIMIT

PIECES = "world_state.tar"


class _Pieces(io.RawIOBase):
    """A write-only stream cut into files <folder>/<name>.000, .001, ... of at most `limit` bytes each."""

    def __init__(self, folder: Path, name: str, limit: int):
        self.folder, self.name, self.limit = folder, name, limit
        self.paths: list[Path] = []
        self._file = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self._left == 0:
                self._next()
            n = min(self._left, len(view) - done)
            self._file.write(view[done:done + n])
            self._left -= n
            done += n
        return done

    def _next(self) -> None:
        if self._file is not None:
            self._file.close()
        path = self.folder / f"{self.name}.{len(self.paths):03d}"
        self.paths.append(path)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by the next piece or close()
        self._left = self.limit

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def packed_paths(out: Path, world: Path, stages: dict[str, type]) -> list[Path]:
    """The files the pack holds (see the module docstring), in a stable order. `stages`: name -> stage class (its
    `left_behind(out, world)` names what a rerun does not read)."""
    keep: list[Path] = sorted(p for p in world.rglob("*") if p.is_file()) if world.is_dir() else []
    if not out.is_dir():
        return keep
    behind = {p for cls in stages.values() for p in cls.left_behind(out, world)}
    keep += [p for p in sorted(out.rglob("*")) if p.is_file() and not behind & {p, *p.parents}]
    return list(dict.fromkeys(keep))  # once each, should the world folder lie inside the runs folder


def pack(out: Path, world: Path, to: Path, stages: dict[str, type], limit: int = FILE_LIMIT) -> dict:
    """Write the pack of the run in `out` and the world folder `world` into `to` as world_state.tar.000, ...
    (each at most `limit` bytes; the pieces of an earlier pack there are replaced). Paths in the tar are as given,
    so unpack from the same working folder. Returns {"files", "bytes", "pieces"}."""
    for folder in (out, world):
        if folder.is_absolute():
            raise UserError(f"{folder} is absolute", hint="give the runs and world folders relative to the folder "
                            "the pack will be unpacked in (as scripts/world.sh's WORLD_OUT and WORLD_DIR are)")
    files = packed_paths(out, world, stages)
    if not files:
        raise UserError(f"nothing to pack in {out} or {world}", hint="run scripts/world.sh (or a stage) first")
    to.mkdir(parents=True, exist_ok=True)
    tmp = to / f".{PIECES}.tmp"
    tmp.mkdir(exist_ok=True)
    for stale in tmp.iterdir():
        stale.unlink()
    stream = _Pieces(tmp, PIECES, limit)
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for path in files:
            tar.add(path, recursive=False)
    stream.close()
    for stale in to.glob(f"{PIECES}.*"):
        stale.unlink()
    pieces = []
    for path in stream.paths:
        os.replace(path, to / path.name)
        pieces.append(to / path.name)
    tmp.rmdir()
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "pieces": pieces}
