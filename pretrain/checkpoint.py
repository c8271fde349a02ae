"""Training checkpoints: everything exact resume needs, written atomically, the last K kept.

    <run>/checkpoints/step_00002000/
        identity.safetensors    the trained identity module (float32)
        ema.safetensors         its EMA
        optimizer.pt            AdamW state (torch.save; loaded with weights_only=True)
        scheduler.pt            LR scheduler state
        rng.pt                  per rank: torch CPU / CUDA RNG and the step generator's state
        trainer_state.json      step, data positions per rank, counters, config (written last)

A checkpoint is assembled in `.step_<n>.tmp` and renamed into place, so a folder named `step_<n>`
is always complete; a crash mid-save leaves only the temporary folder (removed by the next save).
Only the main process writes (the other ranks' RNG states and data positions are gathered to it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.errors import UserError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(UserError, FileNotFoundError):
    """The checkpoint to resume from is missing or incomplete."""


class RunFolderInUse(UserError, FileExistsError):
    """The output folder holds checkpoints of another (or a later) run."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, identity: torch.nn.Module, ema, optimizer,
                    scheduler, rng: list[dict], state: dict, keep: int) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints atomically, then delete all but the last `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step_{step:08d}", root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cpu = lambda sd: {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}  # noqa: E731
    save_file(cpu(identity.state_dict()), str(tmp / "identity.safetensors"))
    save_file(cpu(ema.shadow.state_dict()), str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "ema_updates": ema.updates}, indent=1))
    for f in tmp.iterdir():
        _fsync_file(f)
    if final.exists():  # the same step saved again (e.g. a stop step that is also a checkpoint step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """{"identity", "ema", "optimizer", "scheduler", "rng", "state"} of a checkpoint folder (CPU tensors)."""
    path = Path(path)
    needed = ["identity.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", STATE_FILE]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {missing})",
                              hint="resume from another one (--resume <folder>) or start over (--resume none)")
    load = lambda name: torch.load(path / name, map_location="cpu", weights_only=True)  # noqa: E731
    return {"identity": load_file(str(path / "identity.safetensors")),
            "ema": load_file(str(path / "ema.safetensors")),
            "optimizer": load("optimizer.pt"), "scheduler": load("scheduler.pt"), "rng": load("rng.pt"),
            "state": json.loads((path / STATE_FILE).read_text())}
