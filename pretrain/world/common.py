"""The chunked, resumable training loop every stage of the identity world runs through.

    python -m pretrain.world train clip --out runs/world --world checkpoints/world --minutes 9

A stage (a `Stage` subclass in pretrain/world/<stage>.py) says what it trains, how one step goes and
what it exports; `run_stage` does the rest: load the stage's checkpoint when there is one, step until
the stage's total or the time budget, save atomically (also every `save_minutes`), and, once the total
is reached, export the frozen model into the world weights folder. Rerunning the same command resumes;
rerunning a finished stage only re-exports what is missing from the world folder.

Checkpoint of a stage (each file < 16 MiB, so it travels between machines in small pieces):

    <out>/<stage>/checkpoint/
        state.json                    step, the stage's config, extra state, which files hold what
        <module>.safetensors          each module's weights in bfloat16 (<module>.<k>.safetensors parts
                                      when one file would exceed FILE_LIMIT)
        optimizer.safetensors         optimizer state in bfloat16, only when it fits in OPTIMIZER_LIMIT;
                                      otherwise a resumed run restarts the moments and warms the LR up
                                      again over `rewarm_steps`; none once the stage is finished

A finished stage whose exports are all in place is not loaded again (a rerun reads its state.json alone), so a
finished stage travels to the next machine as its state.json and its exports.

Every random number of step k comes from a generator seeded with (seed, stage, k) (`step_generator`),
so a resumed run continues the same data stream without storing RNG state.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoder.objective import box_mask
from models.atomic import atomic_write, replace_folder
from models.errors import UserError
from models.pixels import to_signed
from pretrain.ema import EMA

FILE_LIMIT = 15 * 2**20  # bytes per checkpoint file (the limit is 16 MiB; keep a margin for the header)
OPTIMIZER_LIMIT = 16 * 2**20  # optimizer state is kept only when its bfloat16 copy is at most this
CHECKPOINT = "checkpoint"
STATE_FILE = "state.json"
MAX_BAD_STEPS = 20  # non-finite steps in a row that stop a stage


@dataclass(frozen=True)
class StageOptions:
    """How a stage is run (the CLI's options).

    out: runs folder (the stage's checkpoint goes to out/<stage>/); world: the world weights folder
    exports go to; minutes: wall-clock budget of this call (None: until the total); max_steps: at
    most this many steps this call (None: no limit); export_when_stopped: a call stopped by either of those
    before the total exports its weights as they are too (the EMA, its learning rate not yet decayed: a
    time-limited chunk of a chain keeps what it trained; the checkpoint still resumes), and with max_steps 0 it
    exports the checkpoint as it stands without a step (to evaluate a run midway); total_steps: replaces
    the stage's step budget (its LR schedule follows; a checkpoint made with another total is refused); tiny:
    tiny configs and a few steps (CPU tests); seed: the world seed every step's randomness derives from; init_from: a
    new run starts from these exported weights (the backbone stage only: a continued run); final_conv: the
    backbone has U-ViT's final 3x3 conv or not (None: its config's; started as the identity when continuing
    from weights without it);
    compile: the backbone's training forward runs under torch.compile (CUDA only; the weights, EMA and
    checkpoints are the same module's); render_workers: the backbone's training renders are drawn by this many
    CPU processes instead of on the training device (WorldData); batch_reuse: the backbone trains this many steps
    on each rendered batch (fresh noise and timesteps each step: rendering is then needed for 1/R of the steps);
    patch_size: a new backbone run's UViT patch side instead of the config's (smaller patches, more tokens: the
    lever for small details such as glasses and hats; part of the run's config); level_gains: the backbone trains
    on a pixel space with these gains per Haar band, finest first (None: its config's for a new run, the exported
    pixel space beside the weights for a continued one; models.pixel_space; part of the run's config);
    eps_steps: the backbone's first steps use the plain noise MSE before its timestep weighting (None: its
    config's for a new run, 0 for a continued one; part of the run's config); face_weight: the backbone's image
    term weighs the face region this many times the rest (None: its config's, 1; part of the run's config);
    space: the backbone's latent space, "pixel" or "autoencoder" (the world's AutoencoderKL; None: the space
    exported beside --init-from's weights, else the pixel space; part of the run's config);
    hard_negatives: the world-CLIP contrasts each image with its caption changed in one attribute too (part of
    the run's config); batch_size: the world-CLIP's or the autoencoder's batch instead of its default (part of the
    run's config); downsample, latent_channels: the autoencoder's downsampling factor (2, 4 or 8) and latent
    channels instead of its config's (part of the run's config); lr: the backbone's peak learning rate instead of
    its config's (its warm-up and cosine decay follow; part of the run's config). compile, render_workers,
    batch_reuse and face_weight apply to the autoencoder stage as to the backbone's.
    """

    out: Path
    world: Path
    device: torch.device
    tiny: bool = False
    minutes: float | None = None
    max_steps: int | None = None
    export_when_stopped: bool = False
    total_steps: int | None = None
    seed: int = 0
    log_every: int = 50
    save_minutes: float = 4.0
    init_from: Path | None = None
    final_conv: bool | None = None
    compile: bool = False
    render_workers: int = 0
    batch_reuse: int = 1
    patch_size: int | None = None
    level_gains: tuple[float, ...] | None = None
    eps_steps: int | None = None
    face_weight: float | None = None
    space: str | None = None
    hard_negatives: bool = False
    batch_size: int | None = None
    downsample: int | None = None
    latent_channels: int | None = None
    lr: float | None = None


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up, then cosine to min_lr_ratio at max_steps (the field names pretrain.train.lr_factor reads)."""

    max_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1
    lr_schedule: str = "cosine"

    def factor(self, step: int) -> float:
        from pretrain.train import lr_factor

        return lr_factor(step, self)


class Stage(ABC):
    """One stage of the world. Subclasses set `name`, build their modules and optimizer in __init__
    (and set `total_steps`, `batch_size`, `schedule`), and implement `train_step` and `export`.

    The runner restores `modules()` and the optimizer from the checkpoint before the first step, then
    calls `train_step(step, generator)` for step = resumed step .. total_steps - 1.
    """

    name: ClassVar[str]
    total_steps: int
    batch_size: int  # samples per step (for the samples/s log)
    schedule: LRSchedule
    base_lr: float
    rewarm_steps: int = 200  # LR warm-up after a resume without optimizer state

    def __init__(self, opts: StageOptions):
        self.opts = opts
        self.device = opts.device
        self.resumed_without_optimizer_at: int | None = None
        self.bad_steps = 0

    def sized(self, full, tiny, steps_field: str = "total_steps"):
        """The stage's training config: `tiny` under --tiny, else `full`, with --total-steps (when given) as its
        `steps_field`."""
        config = tiny if self.opts.tiny else full
        steps = self.opts.total_steps
        return dataclasses.replace(config, **{steps_field: steps}) if steps else config

    def set_steps(self, total_steps: int, batch_size: int, lr: float, warmup_steps: int,
                  min_lr_ratio: float = LRSchedule.min_lr_ratio) -> None:
        """The step budget, the batch and the learning-rate schedule the runner reads."""
        self.total_steps, self.batch_size, self.base_lr = total_steps, batch_size, lr
        self.schedule = LRSchedule(max_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)

    @classmethod
    def finished(cls, out: Path, world: Path) -> bool:
        """Whether the stage has trained its whole total in the runs folder `out` (read from its checkpoint,
        without building the stage; `scripts/world.sh` moves on to the next stage only then)."""
        found = find_checkpoint(out / cls.name / CHECKPOINT)
        return found is not None and bool(json.loads((found / STATE_FILE).read_text()).get("done"))

    @classmethod
    def left_behind(cls, out: Path, world: Path) -> list[Path]:
        """Files and folders of the stage in `out` that a rerun does not read (pretrain.world.travel leaves them
        out of a pack): a save cut short, and once the stage has finished, its checkpoint but for state.json
        (a rerun reads no more of it while its exports are in place, run_stage)."""
        folder = out / cls.name
        behind = [folder / (CHECKPOINT + ".tmp")]
        if cls.finished(out, world):
            behind += [p for name in (CHECKPOINT, CHECKPOINT + ".old") for p in (folder / name).glob("*")
                       if p.name != STATE_FILE]
        return behind

    # ---- what a stage gives -------------------------------------------------------------------------
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The modules whose weights the checkpoint holds (e.g. {"model": ..., "ema": ema.shadow})."""

    def optimizer(self) -> torch.optim.Optimizer | None:
        return None

    def config(self) -> dict:
        """JSON-able description of the stage's configuration; a checkpoint made with another is refused."""
        return {}

    def extra_state(self) -> dict:
        """JSON-able state beyond the weights (e.g. EMA update count)."""
        return {}

    def load_extra_state(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float | torch.Tensor]:
        """One optimizer step; returns the numbers to log (e.g. {"loss": ...}; 0-d tensors are read only
        on the steps that log)."""

    @abstractmethod
    def export(self, world: Path) -> list[Path]:
        """Write the frozen model into the world folder; returns the paths written."""

    def export_paths(self, world: Path) -> list[Path]:
        """What `export` writes (a finished stage re-exports when one of them is missing)."""
        return []

    # ---- helpers for subclasses ---------------------------------------------------------------------
    def lr(self, step: int) -> float:
        """base_lr x schedule, x a linear re-warm-up after a resume that lost the optimizer state."""
        lr = self.base_lr * self.schedule.factor(step)
        if self.resumed_without_optimizer_at is not None:
            lr *= min(1.0, (step - self.resumed_without_optimizer_at + 1) / self.rewarm_steps)
        return lr

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params, max_norm: float = 1.0
                 ) -> torch.Tensor:
        """Backward, clip the gradient norm to max_norm, step; a step whose loss or gradient is not
        finite is skipped (MAX_BAD_STEPS in a row stop the run, the last checkpoint left as it was).
        Returns the gradient norm before clipping."""
        params = list(params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if bool(torch.isfinite(norm) & torch.isfinite(loss.detach())):
            optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            print(f"[{self.name}] non-finite loss or gradient: step skipped ({self.bad_steps} in a row)", flush=True)
            if self.bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(f"{self.name}: {self.bad_steps} non-finite steps in a row; lower the LR")
        return norm

    def autocast(self):
        """bfloat16 autocast on CUDA, nothing elsewhere."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


class EMAStage(Stage):
    """A stage whose export is an EMA (`self.ema`, pretrain.ema.EMA) of its trained model: the checkpoint keeps
    the EMA's update count too, so that a resumed run's EMA goes on from where it was."""

    ema: EMA

    def extra_state(self) -> dict:
        return {"ema_updates": self.ema.updates}

    def load_extra_state(self, state: dict) -> None:
        self.ema.updates = int(state.get("ema_updates", 0))


def overridden(config, **values):
    """dataclasses.replace(config, ...) with only the values that are not None: the options a run was given,
    over its stage's config."""
    return dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})


def step_generator(seed: int, stage: str, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of step `step` of `stage` (on `device`), seeded from (seed, stage, step) alone."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (ndim >= 2), none on biases, norms, scalars."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ---- the face region ----------------------------------------------------------------------------------
FACE_MARGIN = 0.25  # --face-weight's region: the face box widened by this fraction of its side on each side


def face_weight_map(boxes: torch.Tensor, size: int, weight: float, margin: float = FACE_MARGIN) -> torch.Tensor:
    """[B, 1, size, size] float32: `weight` on the pixels whose centres lie in the face box (x1, y1, x2, y2 in
    pixels, boxes [B, 4]) widened by margin times its width and height on each side, 1 elsewhere, divided by
    each image's mean (so every map averages 1). The --face-weight of the backbone and the autoencoder stages,
    and attribute_energy's weighing."""
    inside = box_mask(boxes, size, size, margin).float()  # [B, 1, y, x]
    w = 1.0 + (weight - 1.0) * inside
    return w / w.mean(dim=(2, 3), keepdim=True)


def batch_face_weights(batch: WorldBatch, weight: float, size: int | None = None) -> torch.Tensor | None:
    """face_weight_map of a training batch's face boxes, on its pixels' device, over a map of `size` (default
    the pixels' side; a latent's side maps the boxes onto its cells); None at weight 1 (the plain mean): what a
    stage's --face-weight weighs its image term with."""
    if weight == 1.0:
        return None
    side = batch.pixels.shape[-1]
    boxes = torch.from_numpy(batch.renders.boxes).to(batch.pixels.device)
    return face_weight_map(boxes * ((size or side) / side), size or side, weight)


# ---- training renders ---------------------------------------------------------------------------------
@dataclass
class WorldBatch:
    """pixels: [B, 3, S, S] float32 in [-1, 1] on the training device; captions: B strings;
    renders: the renderer's RenderBatch (identities, attributes, boxes, landmarks, uint8 images)."""

    pixels: torch.Tensor
    captions: list[str]
    renders: object


class WorldData:
    """Training renders of a stage: step k's batch is drawn from (seed, stage, k) alone (identities
    uniform over the train split, render indices uniform). By default it is rendered on the training
    device, the next step's batch in a background thread while this one trains (the thread does not run
    beside the step's GPU work: eval.bench.world_backbone). With `render_workers` P > 0 the batches are
    rendered on the CPU by P processes, up to P steps ahead, and only copied to the device: the same items
    and captions, drawn by the CPU renderer (the same scenes; a GPU's float rounding may differ).
    `every_pair`: the renders may hold the renderer's HELD_OUT pairs (FaceWorld.render's every_pair), for a
    stage that trains an instrument of the evaluation."""

    def __init__(self, seed: int, stage: str, batch_size: int, device: torch.device, size: int = 64,
                 render_workers: int = 0, every_pair: bool = False):
        from data_prep.faceworld.render import FaceWorld

        self.seed, self.stage, self.batch_size, self.device = seed, stage, batch_size, device
        self.size, self.workers, self.every_pair = size, render_workers, every_pair
        self.world = FaceWorld(seed, size, device, chunk=batch_size)
        self._pool: ThreadPoolExecutor | ProcessPoolExecutor | None = None  # started by the first batch asked for
        self._pending: dict[int, Future] = {}
        self._last: tuple[int, WorldBatch] | None = None  # the last batch `get` gave (for batch reuse)

    def _executor(self) -> ThreadPoolExecutor | ProcessPoolExecutor:
        if self._pool is None:
            if self.workers:
                import multiprocessing as mp

                self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                 initializer=_start_render_worker,
                                                 initargs=(self.seed, self.size, self.batch_size,
                                                           self.world.version))
            else:
                self._pool = ThreadPoolExecutor(max_workers=1)
        return self._pool

    def draw(self, step: int, stream: str = "train", batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(identities, render indices) of step `step`'s batch of a stream."""
        from data_prep.faceworld.attributes import split_range

        digest = hashlib.sha256(f"{self.seed}/{self.stage}/{stream}/{step}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        lo, hi = split_range("train")
        n = batch_size or self.batch_size
        return rng.integers(lo, hi, n), rng.integers(0, 2**31, n)

    def make(self, step: int, stream: str = "train", batch_size: int | None = None) -> WorldBatch:
        """Step `step`'s batch, rendered here on the training device."""
        return self._batch(self.world.render(*self.draw(step, stream, batch_size), every_pair=self.every_pair))

    def _batch(self, renders) -> WorldBatch:
        images = renders.images.to(self.device)
        pixels = to_signed(images)
        return WorldBatch(pixels, list(renders.captions), dataclasses.replace(renders, images=images))

    def _submit(self, step: int) -> Future:
        if self.workers:
            return self._executor().submit(_render_on_worker, *self.draw(step), self.every_pair)
        return self._executor().submit(self.make, step)

    def get(self, step: int) -> WorldBatch:
        """Step `step`'s batch (prepared ahead when an earlier step asked for it). Asked again for the same
        step (a stage's batch reuse), the same batch comes back, not rendered again."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        pending = self._pending.pop(step, None)
        for stale in [k for k in self._pending if k < step or k > step + max(1, self.workers)]:
            self._pending.pop(stale).cancel()
        if pending is None:
            pending = self._submit(step)
        for ahead in range(step + 1, step + 1 + max(1, self.workers)):
            if ahead not in self._pending:
                self._pending[ahead] = self._submit(ahead)
        batch = pending.result()
        batch = self._batch(batch) if self.workers else batch
        self._last = (step, batch)
        return batch

    def close(self) -> None:
        """Stop preparing batches ahead: pending ones are cancelled, the background thread or processes end
        (a later batch starts them again)."""
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def captions(self, n: int, stream: str = "stats") -> list[str]:
        """Captions of n training renders of their own stream (not the training batches)."""
        out: list[str] = []
        k = 0
        while len(out) < n:
            out += self.make(k, stream, min(self.batch_size, n - len(out))).captions
            k += 1
        return out


_WORKER_WORLD = None  # a render worker's FaceWorld (WorldData with render_workers)


def _start_render_worker(seed: int, size: int, chunk: int, version: str) -> None:
    global _WORKER_WORLD
    from data_prep.faceworld.render import FaceWorld

    _WORKER_WORLD = FaceWorld(seed, size, "cpu", chunk=chunk, version=version)


def _render_on_worker(identities: np.ndarray, renders: np.ndarray, every_pair: bool = False):
    return _WORKER_WORLD.render(identities, renders, every_pair=every_pair)


# ---- checkpoint files ---------------------------------------------------------------------------------
def _bf16(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to("cpu", torch.bfloat16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in sd.items()}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_parts(tensors: dict[str, torch.Tensor], folder: Path, stem: str, limit: int = FILE_LIMIT) -> list[str]:
    """Save tensors as <stem>.safetensors, or <stem>.<k>.safetensors parts of at most `limit` bytes each
    (a tensor larger than `limit` is an error). Returns the file names."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        n = _nbytes(v)
        if n > limit:
            raise ValueError(f"{stem}: tensor {k} has {n} bytes, more than one checkpoint file may hold ({limit})")
        if size + n > limit and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][k] = v
        size += n
    names = [f"{stem}.safetensors"] if len(parts) == 1 else [f"{stem}.{i}.safetensors" for i in range(len(parts))]
    for name, part in zip(names, parts, strict=True):
        save_file(part, str(folder / name))
    return names


def read_parts(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in names:
        out.update(load_file(str(folder / name)))
    return out


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors "<param index>.<key>" in bfloat16 (step counts as float32), the rest as JSON)."""
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            value = torch.as_tensor(value)
            dtype = torch.float32 if key == "step" else torch.bfloat16
            tensors[f"{idx}.{key}"] = value.detach().to("cpu", dtype).contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value.float()
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(stage: Stage, folder: Path, step: int, done: bool) -> Path:
    """Write the stage's checkpoint to `folder` atomically (a new folder renamed into place)."""
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {name: write_parts(_bf16(m.state_dict()), tmp, name) for name, m in stage.modules().items()}
    optimizer_files, optimizer_meta = None, None
    opt = stage.optimizer()
    if opt is not None and not done:  # nothing resumes a finished stage's optimizer
        tensors, optimizer_meta = _optimizer_tensors(opt)
        if sum(_nbytes(t) for t in tensors.values()) <= OPTIMIZER_LIMIT:
            optimizer_files = write_parts(tensors, tmp, "optimizer")
    state = {"stage": stage.name, "step": step, "done": done, "config": stage.config(), "files": files,
             "optimizer_files": optimizer_files, "optimizer": optimizer_meta if optimizer_files else None,
             "extra": stage.extra_state()}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return replace_folder(tmp, folder, old)


def find_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint folder (the previous one when a save was cut between its two renames)."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The fields in which two JSON configs differ, as 'name: old -> new' (nested names dotted)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            show = lambda v: (repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "...")  # noqa: E731
            out.append(f"{prefix}{k}: {show(a)} -> {show(b)}")
    return out


def checked_state(stage: Stage, folder: Path) -> dict:
    """The checkpoint's state.json; refused when it was made with another configuration of the stage."""
    state = json.loads((folder / STATE_FILE).read_text())
    wanted = json.loads(json.dumps(stage.config()))
    if state.get("config") != wanted:
        diff = _config_diff(state.get("config") or {}, wanted)
        raise UserError(f"{folder} was made with another {stage.name} configuration: {'; '.join(diff[:5])}",
                        hint=f"run with the options it was made with (--tiny or not, the same --total-steps), "
                             f"or remove {folder.parent} to start over")
    return state


def load_checkpoint(stage: Stage, folder: Path) -> dict:
    """Restore the stage from a checkpoint folder; returns its state.json."""
    state = checked_state(stage, folder)
    modules = stage.modules()
    if set(state["files"]) != set(modules):
        raise ValueError(f"{folder} holds modules {sorted(state['files'])}, the stage has {sorted(modules)}")
    for name, module in modules.items():
        tensors = read_parts(folder, state["files"][name])
        target = module.state_dict()
        with torch.no_grad():
            module.load_state_dict({k: v.to(target[k].dtype) if k in target else v for k, v in tensors.items()},
                                   strict=True)
    opt = stage.optimizer()
    if opt is not None and not state["done"]:
        if state.get("optimizer_files"):
            _load_optimizer(opt, read_parts(folder, state["optimizer_files"]), state["optimizer"])
        else:
            stage.resumed_without_optimizer_at = int(state["step"])
    stage.load_extra_state(state.get("extra") or {})
    return state


# ---- the loop -----------------------------------------------------------------------------------------
def _log(stage: Stage, step: int, logs: dict[str, float | torch.Tensor], rate: float, elapsed: float) -> None:
    terms = " ".join(f"{k} {float(v):.4g}" for k, v in logs.items())
    print(f"[{stage.name}] step {step}/{stage.total_steps} {terms} | {rate:.0f} samples/s | {elapsed / 60:.1f} min",
          flush=True)


def run_stage(stage: Stage) -> dict:
    """Resume, train until the total or the time budget, save; export when the total is reached (or when
    stopped short of it, with opts.export_when_stopped).

    Returns {"step", "done", "exported": [paths], "checkpoint": path, "steps_run"}.
    """
    opts = stage.opts
    folder = opts.out / stage.name / CHECKPOINT
    found = find_checkpoint(folder)
    step, done = 0, False
    wanted = stage.export_paths(opts.world)
    if found is not None and (state := checked_state(stage, found))["done"] and wanted and all(
            p.exists() for p in wanted):
        print(f"[{stage.name}] finished at step {state['step']} (its exports are in {opts.world})", flush=True)
        return {"step": int(state["step"]), "done": True, "exported": [], "checkpoint": found, "steps_run": 0}
    if found is None and opts.max_steps == 0 and opts.export_when_stopped:
        raise UserError(f"nothing to export: no checkpoint of stage {stage.name!r} in {folder}",
                        hint="--steps 0 --export-when-stopped exports a stage's checkpoint as it stands: train first")
    if found is not None:
        state = load_checkpoint(stage, found)
        step, done = int(state["step"]), bool(state["done"])
        print(f"[{stage.name}] resumed from {found} at step {step}"
              + (" (optimizer state restarted)" if stage.resumed_without_optimizer_at is not None else ""), flush=True)
    from data_prep.faceworld.render import record_folder_version, renderer_version

    print(f"[{stage.name}] renders of {renderer_version()}", flush=True)
    start = last_save = last_log = time.monotonic()
    steps_run, logged_steps = 0, 0
    budget = None if opts.minutes is None else opts.minutes * 60
    while step < stage.total_steps:
        if budget is not None and time.monotonic() - start >= budget:
            break
        if opts.max_steps is not None and steps_run >= opts.max_steps:
            break
        logs = stage.train_step(step, step_generator(opts.seed, stage.name, step, stage.device))
        step += 1
        steps_run += 1
        now = time.monotonic()
        if step % opts.log_every == 0 or step == stage.total_steps:
            if stage.device.type == "cuda":
                torch.cuda.synchronize(stage.device)
                now = time.monotonic()
            rate = (steps_run - logged_steps) * stage.batch_size / max(now - last_log, 1e-9)
            _log(stage, step, logs, rate, now - start)
            last_log, logged_steps = now, steps_run
        if now - last_save >= opts.save_minutes * 60 and step < stage.total_steps:
            save_checkpoint(stage, folder, step, done=False)
            last_save = time.monotonic()
    if isinstance(data := getattr(stage, "data", None), WorldData):
        data.close()  # no renders ahead of a step that will not run (render workers end here)
    done = step >= stage.total_steps
    if steps_run or found is None:
        save_checkpoint(stage, folder, step, done=done)
    exported: list[Path] = []
    if done or (opts.export_when_stopped and (steps_run or opts.max_steps == 0)):
        if steps_run or not done or not wanted or not all(p.exists() for p in wanted):
            exported = stage.export(opts.world)
            record_folder_version(opts.world)
            print(f"[{stage.name}] exported {', '.join(str(p) for p in exported)}"
                  + ("" if done else f" (stopped at step {step}/{stage.total_steps})"), flush=True)
    if not done:
        print(f"[{stage.name}] stopped at step {step}/{stage.total_steps}; rerun to continue",
              flush=True)
    return {"step": step, "done": done, "exported": exported, "checkpoint": folder, "steps_run": steps_run}


# ---- shared export helpers ----------------------------------------------------------------------------
def write_json(path: Path, obj) -> Path:
    """JSON written atomically."""
    text = json.dumps(obj, indent=1)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def merge_model_configs(world: Path, entries: dict[str, dict]) -> Path:
    """Add or replace entries of <world>/model_configs.json (written atomically)."""
    path = world / "model_configs.json"
    configs = json.loads(path.read_text()) if path.is_file() else {}
    configs.update(entries)
    return write_json(path, configs)


def as_json_config(config) -> dict:
    """A frozen dataclass config as a JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def gain_list(text: str) -> tuple[float, ...]:
    """--level-gains (train) and --energy-level-gains (evaluate): comma-separated positive numbers."""
    try:
        gains = tuple(float(g) for g in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if any(not g > 0 for g in gains):
        raise argparse.ArgumentTypeError(f"gains must be positive: {text!r}")
    return gains
