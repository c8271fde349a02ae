"""Training checkpoints: everything exact resume needs, written atomically, the last K kept.

    <run>/checkpoints/step_00002000/
        identity.safetensors    the trained identity module (float32)
        ema.safetensors         its EMA
        optimizer.pt            AdamW state (torch.save; loaded with weights_only=True)
        scheduler.pt            LR scheduler state
        rng.pt                  per rank: torch CPU / CUDA RNG and the step generator's state
        trainer_state.json      step, data positions per rank, counters, config (written last)

A checkpoint is assembled in `.step_<n>.tmp` (each file written with models.atomic, so it is on
disk) and renamed into place, then the folder's entries are synced, so a folder named `step_<n>` is
always complete; a crash mid-save leaves only the temporary folder (removed by the next save). A
checkpoint of the same step saved again (a stop step that is also a checkpoint step) replaces the
old one only once it is in place: the old folder is renamed aside to `.step_<n>.old`, the new one
renamed in, then the old one deleted; a crash between the two renames leaves the aside folder,
which counts as the checkpoint of that step until a save replaces it. Only the main process writes
(the other ranks' RNG states and data positions are gathered to it).

Training calls `save_progress` (gather, write, keep the last K) and, to resume, `resume_path` (which
checkpoint), `check_same_model` (the run's model shape is the config's) and `restore` (weights,
optimizer, RNG, data positions back in place).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.atomic import atomic_write, replace_folder, write_json_atomic
from models.errors import UserError
from pretrain.config import PretrainConfig, flat_fields

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_ASIDE_DIR = re.compile(r"^\.step_(\d{8})\.old$")  # a checkpoint being replaced by one of the same step
MODEL_SHAPE_FIELDS = ("injection", "num_tokens", "hidden_dim", "kv_rank", "uvit")  # a run's weights only fit these
SHAPE_FIELDS_ADDED = {"kv_rank": 0}  # shape fields newer than some runs: absent means this value


class CheckpointError(UserError, FileNotFoundError):
    """The checkpoint to resume from is missing or incomplete."""


class RunFolderInUse(UserError, FileExistsError):
    """The output folder holds checkpoints of another (or a later) run."""


class ModelShapeChanged(UserError, ValueError):
    """The config asks for another model shape than the checkpoint to resume from was trained with."""


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, identity: torch.nn.Module, ema, optimizer,
                    scheduler, rng: list[dict], state: dict, keep: int) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints atomically, then delete all but the last `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final, tmp, aside = (root / f"step_{step:08d}", root / f".step_{step:08d}.tmp", root / f".step_{step:08d}.old")
    for old in root.glob(".step_*.old"):  # left by a crash after its replacement was renamed in
        if (root / old.name[1:-len(".old")]).is_dir():
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    cpu = lambda sd: {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}  # noqa: E731
    for name, tensors in (("identity.safetensors", cpu(identity.state_dict())),
                          ("ema.safetensors", cpu(ema.shadow.state_dict()))):
        atomic_write(tmp / name, lambda p, tensors=tensors: save_file(tensors, str(p)))
    for name, obj in (("optimizer.pt", optimizer.state_dict()), ("scheduler.pt", scheduler.state_dict()),
                      ("rng.pt", rng)):
        atomic_write(tmp / name, lambda p, obj=obj: torch.save(obj, p))
    write_json_atomic(tmp / STATE_FILE, {**state, "step": step, "ema_updates": ema.updates}, indent=1)
    replace_folder(tmp, final, aside)  # the same step saved again: the old folder goes once the new is in
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first: the step_* folders, and a .step_*.old one where a
    crash left no step_* folder of its step."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name) or _ASIDE_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file() and (int(m.group(1)) not in found or _STEP_DIR.match(p.name)):
            found[int(m.group(1))] = p
    return [found[k] for k in sorted(found)]


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


# ------------------------------------------------------------------------------- training's side
@dataclass
class Progress:
    """Where a run stands, besides its weights and optimizer: what a checkpoint records and resume restores.

    data: this rank's position in the shard stream, {"workers": {worker: the state of its last batch},
    "next_worker": the worker the loader asks next, "num_workers": its number of workers}.
    """

    step: int = 0
    bad_streak: int = 0  # non-finite steps in a row
    skipped_steps: int = 0
    data: dict = field(default_factory=dict)

    @classmethod
    def start(cls, workers: int) -> Progress:
        return cls(data={"workers": {}, "next_worker": 0, "num_workers": workers})

    def took(self, batch_state: dict) -> None:
        """A batch was taken from the stream (its "state" entry, pretrain.data.ShardStream)."""
        self.data["workers"][batch_state["worker"]] = batch_state
        self.data["next_worker"] = (batch_state["worker"] + 1) % self.data["num_workers"]


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: start fresh), for config.resume ("auto", "none" or a folder).

    Starting fresh, or from an earlier checkpoint, in an output_dir that holds later checkpoints is
    refused: the runs would mix, and keeping the last K checkpoints by step would delete the new ones.
    """
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = None
    if resume != "none":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {path}: no such checkpoint folder",
                                  hint="use auto, none or a <run>/checkpoints/step_* folder")
    latest = latest_checkpoint(run_dir)
    if latest is not None and (path is None or path.resolve() != latest.resolve()):
        raise RunFolderInUse(f"{run_dir} already holds checkpoints up to {latest.name}; starting "
                             f"{'over' if path is None else 'from ' + str(path)} there would mix two runs and "
                             "the cleanup would delete the new checkpoints. Use a new --output_dir, or "
                             "--resume auto to continue the existing run.")
    return path


def check_same_model(path: Path, config: PretrainConfig) -> None:
    """ModelShapeChanged when `config` differs from the config checkpoint `path` was trained with in a
    model-shape field (MODEL_SHAPE_FIELDS): its weights would not load. Reads only trainer_state.json;
    an unreadable one is left to load_checkpoint to report."""
    try:
        saved = flat_fields(json.loads((Path(path) / STATE_FILE).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    now = json.loads(json.dumps(config.to_dict()))  # the JSON form the saved one has
    saved = {**SHAPE_FIELDS_ADDED, **saved}
    changed = [k for k in MODEL_SHAPE_FIELDS if k in saved and saved[k] != now[k]]
    if not changed:
        return
    run = Path(path).parent.parent
    what = "; ".join(f"{k}: run {json.dumps(saved[k])}, config {json.dumps(now[k])}" for k in changed)
    keep = " ".join(f"--{k} {_cli_value(saved[k])}" for k in changed)
    raise ModelShapeChanged(
        f"the run in {run} has another model shape than this config ({what}); its checkpoint "
        f"{Path(path).name} cannot be resumed with it",
        hint=f"to start a new run with this shape, give a new --output_dir; to continue this run, drop the "
             f"change (or pass {keep})")


def _cli_value(v) -> str:
    """A config value as a command-line option takes it."""
    if isinstance(v, dict):
        return "'" + json.dumps(v) + "'"
    return "none" if v is None else str(v)


def restore(path: Path, config: PretrainConfig, *, identity: torch.nn.Module, ema, optimizer, scheduler,
            generator: torch.Generator, device: torch.device, rank: int, world: int,
            log: logging.Logger) -> Progress:
    """Load checkpoint `path` into the (not yet accelerate-prepared) training objects; its Progress.

    The RNG states and data positions come back only with the same number of processes (and, for the
    data, of workers per process); otherwise the data stream restarts, with a warning.
    """
    saved = load_checkpoint(path)
    state = saved["state"]
    identity.load_state_dict(saved["identity"])
    ema.load_state_dict({"shadow": saved["ema"], "updates": state["ema_updates"]})
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    progress = Progress.start(max(config.num_workers, 1))
    progress.step, progress.bad_streak, progress.skipped_steps = (state["step"], state["bad_streak"],
                                                                  state["skipped_steps"])
    exact = False
    if state["world_size"] == world and len(saved["rng"]) == world:
        set_rng_state(saved["rng"][rank], generator, device)
        if state["data"][rank]["num_workers"] == progress.data["num_workers"]:
            progress.data = dict(state["data"][rank])
            progress.data["workers"] = {int(k): v for k, v in progress.data["workers"].items()}  # JSON keys
            exact = True
    if not exact:
        log.warning("resuming %s with another number of processes or data workers: the data stream "
                    "restarts from its beginning (not an exact resume)", path)
    now = flat_fields(config.to_dict())
    changed = {k: (v, now[k]) for k, v in flat_fields(state["config"]).items()
               if k not in ("resume", "stop_at_step") and now.get(k, v) != v}
    if changed:
        log.warning("config differs from the checkpoint's: %s", changed)
    if scheduler.last_epoch != progress.step:  # a checkpoint from before skipped steps moved the schedule
        log.warning("LR schedule at step %d, step counter at %d: the schedule follows the step counter from "
                    "here", scheduler.last_epoch, progress.step)
        scheduler.last_epoch = progress.step - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stepping before this process's first optimizer step
            scheduler.step()
    log.info("resumed from %s at step %d", path, progress.step)
    return progress


def save_progress(accelerator, run_dir: Path, progress: Progress, config: PretrainConfig, *, identity, ema,
                  optimizer, scheduler, generator: torch.Generator, log: logging.Logger) -> Path | None:
    """Checkpoint at progress.step: every rank's RNG state and data position gathered to the main
    process, which writes (save_checkpoint) and keeps the last config.keep_checkpoints. The path
    (None on the other ranks); every rank waits for the write."""
    from accelerate.utils import gather_object

    rng = gather_object([rng_state(generator, accelerator.device)])
    data = gather_object([progress.data])
    path = None
    if accelerator.is_main_process:
        samples_per_step = config.batch_size * config.grad_accum * accelerator.num_processes
        state = {"bad_streak": progress.bad_streak, "skipped_steps": progress.skipped_steps,
                 "world_size": accelerator.num_processes, "data": data, "config": config.to_dict(),
                 "samples_seen": progress.step * samples_per_step}
        path = save_checkpoint(run_dir, progress.step, identity=identity, ema=ema, optimizer=optimizer,
                               scheduler=scheduler, rng=rng, state=state, keep=config.keep_checkpoints)
        log.info("checkpoint %s", path)
    accelerator.wait_for_everyone()
    return path
