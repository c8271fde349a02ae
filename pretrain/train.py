"""Pretrain the identity module on shards of precomputed features, with accelerate.

    python -m pretrain.train --config pretrain/configs/v1.json --shards shards/ --output_dir runs/faceid
    accelerate launch --num_processes 8 -m pretrain.train --config pretrain/configs/v1.json ...
    python -m pretrain.train --config pretrain/configs/v1.json --random_backbone --benchmark 20

One step: `grad_accum` batches from the shard stream -> for each, UniDiffuser's noise MSE
(encoder.objective, fed by pretrain.losses) through the frozen bf16 UViT with the identity tokens
injected, and backward (DDP averages the identity module's gradients; the backbone has none) -> clip
-> if the loss and the gradient norm are finite on every rank: AdamW step and EMA update; otherwise
the step is skipped with a log line, and `max_bad_steps` skipped steps in a row stop the run (the
last checkpoint stays as it was) -> LR schedule step (skipped steps included: the learning rate is a
function of the step counter). Every `checkpoint_every` steps an atomic checkpoint
(pretrain.checkpoint, which also resumes); every `log_every` a report (pretrain.logs) and the damaged
shards met since the last one; every `val_every` (and at the last step) the identity diagnostic of
the EMA module on held-out samples (pretrain.diagnostic: id_gain, generic_gain); every
`sample_every` a sample grid; at `max_steps` the EMA module is exported with IdentityModule.save to
<output_dir>/faceid_encoder/, the folder sample.py loads, its config.json carrying the last identity
diagnostic. With `export_every` the EMA module is also exported every N steps to
<output_dir>/exports/step_<n>/ (a few MB each, no optimizer state), so that a run's modules can be
compared by sampling (`python -m eval.identity_grid --encoder NAME=DIR ...`): id_gain alone can rank
modules the wrong way round (docs/identity_world_eval.md, section 4).

Ctrl-C (SIGINT) stops the run after the step in progress with a checkpoint at that step, then
raises KeyboardInterrupt (the CLI exits 130 with one line); rerunning the command resumes exactly.
A third Ctrl-C stops at once, keeping the last checkpoint. Resuming a run with another model shape
(num_tokens, hidden_dim, injection, kv_rank, uvit) is refused before anything is built.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from encoder.face_analysis import describe_face_model
from encoder.identity import IdentityModule
from encoder.objective import TERMS, LossConfig
from models.atomic import atomic_write, write_json_atomic
from models.errors import UserError, run_cli
from models.noise_schedule import NoiseScheduleVP
from pretrain.checkpoint import Progress, check_same_model, restore, resume_path, save_progress
from pretrain.config import PretrainConfig, add_config_arguments, overrides_from_args
from pretrain.data import (
    DataError,
    ShardStream,
    check_shards,
    conditioning_fractions,
    expected_shapes,
    list_shards,
    load_clusters,
    make_loader,
    shards_face_model,
    too_few_shards,
)
from pretrain.diagnostic import IdentityDiagnostic, verdict
from pretrain.ema import EMA
from pretrain.logs import JsonLog, LogWindow, make_logger, write_identity_scalars, write_scalars
from pretrain.losses import diffusion_loss
from pretrain.model import PretrainNet, backbone_config, build_backbone, build_identity, latent_scale
from pretrain.validation import SampleGrid, split_shards

EXPORT_DIR = "faceid_encoder"
SNAPSHOT_DIR = "exports"  # <output_dir>/exports/step_<n>/: export_every's EMA modules


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive non-finite steps; the last checkpoint is left as it was.

    The user acts on it (resume with a lower learning rate, check the shards); exit code 3 tells it
    apart from a bad input (docs/pretraining.md).
    """

    exit_code = 3


@dataclass
class TrainResult:
    step: int  # the step the run ended at
    losses: list[float]  # the global mean loss of every step this call ran (NaN where skipped)
    identity: IdentityModule  # the trained module (unwrapped, on the training device)
    ema: IdentityModule  # its EMA
    export_dir: Path | None  # <output_dir>/faceid_encoder when max_steps was reached
    skipped_steps: int
    checkpoint: Path | None  # the last checkpoint written


# -------------------------------------------------------------------------------------- pieces
def param_groups(identity: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the projector's matrices only (not gates, positions, norms or biases)."""
    decay, no_decay = [], []
    for name, p in identity.named_parameters():
        (decay if p.ndim >= 2 and name.startswith("projector.") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Linear warm-up over warmup_steps, then constant or cosine down to min_lr_ratio at max_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def optimizer_step(accelerator: Accelerator, net, optimizer, scheduler, ema: EMA, batches: list[dict],
                   schedule: NoiseScheduleVP, loss_cfg: LossConfig, generator: torch.Generator,
                   grad_clip: float, stop_requested: Callable[[], bool] | None = None, *, latent_scale: float
                   ) -> tuple[bool, torch.Tensor, float, bool]:
    """One optimizer step over `batches` (the micro-batches, on the device); latent_scale: the weights' image
    space's (pretrain.model.latent_scale).

    Returns (ok, terms [3] on the CPU = global mean loss, loss_z, loss_clip, grad norm, stop). ok is False
    when a loss or the gradient norm is not finite; then the weights are not updated (identical on every
    rank: both numbers are synchronised). The LR schedule steps either way. stop: whether
    `stop_requested()` was true on any rank (read with the loss terms, no extra synchronisation).
    """
    terms = torch.zeros(len(TERMS), device=accelerator.device)
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(net):
            with accelerator.autocast():
                loss, parts = diffusion_loss(net, batch, schedule, loss_cfg, generator, latent_scale)
            accelerator.backward(loss / len(batches))
        terms += torch.stack([parts[k] for k in TERMS]) / len(batches)
    stop = float(stop_requested is not None and stop_requested())
    terms = accelerator.reduce(torch.cat([terms, terms.new_tensor([stop])]), reduction="mean")
    params = [p for p in net.parameters() if p.requires_grad]
    grad_norm = accelerator.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    # the one host sync of a step: loss terms, stop flag and gradient norm together, before the update
    stats = torch.cat([terms.float(), torch.as_tensor(grad_norm, device=terms.device).float().reshape(1)]).cpu()
    terms, stop, grad_norm = stats[:-2], bool(stats[-2] > 0), float(stats[-1])
    ok = math.isfinite(grad_norm) and bool(torch.isfinite(terms).all())
    if ok:
        optimizer.step()
        ema.update(accelerator.unwrap_model(net).identity)
    with warnings.catch_warnings():  # a skipped first step steps the schedule before any optimizer step
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return ok, terms, grad_norm, stop


def pretraining_record(config: PretrainConfig, step: int, samples_seen: int) -> dict:
    """The "pretraining" entry of an exported module's config.json."""
    return {"step": step, "samples_seen": samples_seen, "shards": config.shards,
            "backbone": "random" if config.random_backbone else "pretrained", "ema_decay": config.ema_decay}


def export_ema(ema: EMA, folder: Path, config: PretrainConfig, step: int, samples_per_step: int, jlog: JsonLog,
               face_model: dict | None) -> Path:
    """The EMA module at `step`, as sample.py loads it, with its pretraining record, the run's last
    identity diagnostic and the shards' face model."""
    return ema.shadow.save(folder, extra={"pretraining": pretraining_record(config, step, step * samples_per_step),
                                          "identity_diagnostic": jlog.last("identity"), "face_model": face_model})


def build(config: PretrainConfig, device: torch.device):
    """(backbone, identity module, PretrainNet, EMA, optimizer, scheduler) for a config, on `device`."""
    uvit = build_backbone(config, device)
    identity = build_identity(config, uvit.config).to(device)
    cuda = torch.device(device).type == "cuda"
    net = PretrainNet(uvit, identity, config.activation_checkpointing, fused=config.fused_identity,
                      compile_blocks=config.compile_blocks and cuda)
    ema = EMA(identity, config.ema_decay)
    optimizer = torch.optim.AdamW(param_groups(identity, config.weight_decay), lr=config.lr,
                                  betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                                  fused=cuda or None)  # one kernel for the whole module on the GPU
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    return uvit, identity, net, ema, optimizer, scheduler


def open_batches(config: PretrainConfig, shards: list[Path], uvit_config, device: torch.device, *, rank: int = 0,
                 world: int = 1, data: dict | None = None) -> tuple[ShardStream, Iterator[dict]]:
    """The shard stream of this rank and its batches through the DataLoader's workers (pinned memory on
    CUDA), from a resumed position `data` (Progress.data) or the start."""
    stream = ShardStream(shards, batch_size=config.batch_size, shapes=expected_shapes(uvit_config), rank=rank,
                         world=world, seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                         shards_per_group=config.shards_per_group, pair_identities=config.pair_identities,
                         reservoir_size=config.reservoir_size, start=(data or {}).get("workers", {}),
                         clusters=load_clusters(shards) if config.pair_identities else None)
    return stream, make_loader(stream, config.num_workers, pin_memory=torch.device(device).type == "cuda",
                               first_worker=(data or {}).get("next_worker", 0))


# ---------------------------------------------------------------------------------------- train
def train(config: PretrainConfig) -> TrainResult:
    """Run (or resume) pretraining as configured; see the module docstring."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    run_dir, is_main = Path(config.output_dir), accelerator.is_main_process
    run_dir.mkdir(parents=True, exist_ok=True)
    log = make_logger(run_dir, is_main)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes

    # ---- data first: wrong shards fail before the backbone is built
    shards, val_shards, held_out = split_shards(list_shards(config.shards), config)
    check_shards(shards, backbone_config(config))
    face_model = shards_face_model(sorted(set(shards) | set(val_shards)))
    workers = max(config.num_workers, 1)
    if message := too_few_shards(len(shards), world, workers):
        raise DataError(message)

    # ---- where the run stands (a checkpoint, if any): another model shape fails before anything is built
    last_ckpt = resume_path(config.resume, run_dir)
    if last_ckpt is not None:
        check_same_model(last_ckpt, config)

    # ---- model, optimizer, step randomness, and the checkpoint's state
    uvit, identity, net, ema, optimizer, scheduler = build(config, device)
    generator = torch.Generator(device).manual_seed(config.seed * 100_003 + rank)
    log.info("backbone %s UViT (%s, %.0f M params, frozen); identity module %.2f M params (%s, K=%d%s); "
             "%d process(es) on %s", "random" if config.random_backbone else "pretrained", config.backbone_dtype,
             sum(p.numel() for p in uvit.parameters()) / 1e6, sum(p.numel() for p in identity.parameters()) / 1e6,
             config.injection, config.num_tokens, f", key/value rank {config.kv_rank}" if config.kv_rank else "",
             world, device)
    progress = Progress.start(workers)
    if last_ckpt is not None:
        progress = restore(last_ckpt, config, identity=identity, ema=ema, optimizer=optimizer, scheduler=scheduler,
                           generator=generator, device=device, rank=rank, world=world, log=log)
    net, optimizer = accelerator.prepare(net, optimizer)

    # ---- the data stream, from the resumed position
    stream, batches = open_batches(config, shards, uvit.config, device, rank=rank, world=world,
                                   data=progress.data)
    for folder, clusters in stream.clusters.items():
        log.info("identity clusters of %s: %d faces in %d clusters (threshold %s)", folder, len(clusters),
                 clusters.report["clusters"], clusters.report["config"]["threshold"])
    log.info("data: %d shards from %s, %d worker(s) per process, batch %d x %d micro-steps x %d processes; "
             "face model: %s", len(shards), config.shards, config.num_workers, config.batch_size, config.grad_accum,
             world, describe_face_model(face_model))

    # ---- reports: TensorBoard, sample grids, the resolved config (main process)
    writer = grid = diagnostic = jlog = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=progress.step or None)
        jlog = JsonLog(run_dir / "log.json", progress.step)
        log.info("validation: %d shard(s)%s", len(val_shards), " held out of training" if held_out else
                 ", the training shards themselves (val_holdout_shards 0): not held out")
        grid = SampleGrid.create(config, uvit, device, val_shards, log)
        diagnostic = IdentityDiagnostic.create(config, uvit.config, val_shards, device, log)
        write_json_atomic(run_dir / "config.json", config.to_dict(), indent=1)

    schedule = NoiseScheduleVP.stable_diffusion()
    scale = latent_scale(config)  # the weights' image space: shard moments -> the backbone's latents
    stop = min(config.max_steps, config.stop_at_step or config.max_steps)
    samples_per_step = config.batch_size * config.grad_accum * world
    losses: list[float] = []
    window, t_start, start_step = LogWindow(progress.step), time.time(), progress.step
    bar = tqdm(total=config.max_steps, initial=progress.step, unit="step", dynamic_ncols=True, disable=not is_main,
               desc="pretrain")
    damaged: list[str] = []  # damaged shards this rank met since the last report
    reported: set[str] = set()
    interrupted = False
    with StopOnCtrlC() as ctrl_c:
        try:
            while progress.step < stop and not interrupted:
                micro = [next(batches) for _ in range(config.grad_accum)]
                for b in micro:
                    progress.took(b["state"])
                    damaged += b["damaged"]
                ok, terms, grad_norm, interrupted = optimizer_step(
                    accelerator, net, optimizer, scheduler, ema, [to_device(b, device) for b in micro], schedule,
                    config.loss, generator, config.grad_clip, stop_requested=ctrl_c.requested, latent_scale=scale)
                progress.step += 1
                step = progress.step
                losses.append(float(terms[0]) if ok else math.nan)
                if ok:
                    progress.bad_streak = 0
                    window.add(terms, grad_norm)
                else:
                    count_skipped_step(progress, terms, grad_norm, config.max_bad_steps, last_ckpt, log)
                bar.update(1)
                last = step == stop or interrupted
                if step % config.log_every == 0 or last:
                    means, grad, rate = window.close(step, samples_per_step)
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{means[0]:.4f}", lr=f"{lr:.2e}", rate=f"{rate:.1f}/s", refresh=False)
                    if writer is not None:
                        scalars = write_scalars(writer, step, means, grad, rate, lr, progress.skipped_steps,
                                                progress.data)
                        jlog.add("train", step, scalars)
                    report_damaged(accelerator, damaged, reported, log)
                if diagnostic is not None and (step % config.val_every == 0 or last):
                    validate_identity(diagnostic, uvit, ema.shadow, accelerator, step, writer, jlog, log)
                if step % config.checkpoint_every == 0 or last:
                    last_ckpt = save_progress(accelerator, run_dir, progress, config,
                                              identity=accelerator.unwrap_model(net).identity, ema=ema,
                                              optimizer=optimizer, scheduler=scheduler, generator=generator,
                                              log=log) or last_ckpt
                if is_main and config.export_every and step % config.export_every == 0:
                    export_ema(ema, run_dir / SNAPSHOT_DIR / f"step_{step:08d}", config, step, samples_per_step,
                               jlog, face_model)
                if grid is not None and config.sample_every and step % config.sample_every == 0:
                    image = grid(ema.shadow)
                    writer.add_image("samples", image, step)
                    save_png(image, run_dir / "samples" / f"step_{step:08d}.png")
        finally:
            bar.close()
            batches.close()
            if writer is not None:
                writer.flush()
    if reported:
        log.warning("%d damaged shard(s) met (named above); their lost samples were skipped", len(reported))
    if interrupted and progress.step < stop:
        log.info("interrupted at step %d: checkpoint %s written; rerun the same command to resume", progress.step,
                 last_ckpt)
        raise KeyboardInterrupt

    step, export = progress.step, None
    if step >= config.max_steps and is_main:
        export = export_ema(ema, run_dir / EXPORT_DIR, config, step, samples_per_step, jlog, face_model)
    accelerator.wait_for_everyone()
    if is_main:
        dt, ran = time.time() - t_start, step - start_step
        log.info("done: step %d of %d; this call ran %d steps in %.1f s (%.1f samples/s); %d steps skipped; "
                 "last loss %.4f; %s", step, config.max_steps, ran, dt, ran * samples_per_step / max(dt, 1e-9),
                 progress.skipped_steps, next((v for v in reversed(losses) if math.isfinite(v)), math.nan),
                 f"EMA module exported to {export}" if export else f"checkpoint {last_ckpt}")
        fractions = conditioning_fractions(progress.data["workers"].values())
        log.info("conditioning (rank 0): %.1f %% real pairs, %.1f %% augmented views, %.1f %% own embedding%s",
                 *(100 * fractions[k] for k in ("paired", "augmented", "self")),
                 " (shards without arcface_aug: rerun data_prep)" if fractions["self"] else "")
    return TrainResult(step, losses, accelerator.unwrap_model(net).identity, ema.shadow, export,
                       progress.skipped_steps, last_ckpt)


def report_damaged(accelerator: Accelerator, damaged: list[str], reported: set[str], log: logging.Logger) -> None:
    """Log (main process) the damaged-shard messages of every rank not logged before, then empty `damaged`.
    A collective: every rank calls it at the same step."""
    from accelerate.utils import gather_object

    for message in gather_object(list(damaged)):
        if message not in reported and accelerator.is_main_process:
            reported.add(message)
            log.warning("%s", message)
    damaged.clear()


class StopOnCtrlC:
    """Within `with StopOnCtrlC() as c:` (in the main thread), Ctrl-C makes c.requested() true instead of
    raising KeyboardInterrupt, so that training stops between steps, with a checkpoint; the third press
    raises it (stop at once, without one). In another thread Ctrl-C keeps its usual effect."""

    def __init__(self):
        self.presses, self._previous = 0, None

    def requested(self) -> bool:
        return self.presses > 0

    def _on_sigint(self, signum, frame) -> None:
        self.presses += 1
        if self.presses >= 3:
            raise KeyboardInterrupt
        more = "twice more" if self.presses == 1 else "once more"
        os.write(2, f"\nCtrl-C: stopping after this step, with a checkpoint (Ctrl-C {more}: stop now, without "
                    f"one)\n".encode())

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def validate_identity(diagnostic: IdentityDiagnostic, uvit, identity, accelerator: Accelerator, step: int,
                      writer, jlog: JsonLog, log: logging.Logger) -> dict:
    """Run the identity diagnostic on `identity` (the EMA module) and report it: TensorBoard identity/*,
    the JSON log (kind "identity"), a log line."""
    result = diagnostic(uvit, identity, accelerator.autocast)
    write_identity_scalars(writer, step, result)
    jlog.add("identity", step, result)
    log.info("identity diagnostic at step %d (EMA, %d held-out samples, %d real pairs): id_gain %.5f +- %.5f, "
             "generic_gain %.5f +- %.5f; %s", step, result["samples"], result["real_pairs"], result["id_gain"],
             result["id_gain_se"], result["generic_gain"], result["generic_gain_se"], verdict(result))
    return result


def count_skipped_step(progress: Progress, terms: torch.Tensor, grad_norm: float, max_bad_steps: int,
                       last_ckpt: Path | None, log: logging.Logger) -> None:
    """A step skipped for a non-finite loss or gradient: counted and logged; TrainingDiverged after
    max_bad_steps in a row."""
    progress.bad_streak += 1
    progress.skipped_steps += 1
    log.warning("step %d skipped: non-finite loss %s or gradient norm %s (%d in a row, limit %d)", progress.step,
                [round(float(t), 4) for t in terms], grad_norm, progress.bad_streak, max_bad_steps)
    if progress.bad_streak >= max_bad_steps:
        raise TrainingDiverged(
            f"{progress.bad_streak} non-finite steps in a row at step {progress.step}: stopping. The last good "
            f"checkpoint is {last_ckpt or '(none written yet)'}; resume from it with a lower --lr or check the "
            f"shards for NaN features.")


def save_png(image: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [0, 1] -> PNG at path, atomically."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


# ------------------------------------------------------------------------------------ benchmark
def synthetic_batch(uvit_config, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """A batch with the shard stream's keys, shapes and dtypes, random contents (for timing)."""
    g = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(uvit_config)
    face = torch.nn.functional.normalize(torch.randn(batch_size, 512, generator=g), dim=-1)
    batch = {"moments": torch.randn(batch_size, *shapes["moments"], generator=g).half(),
             "text": torch.randn(batch_size, *shapes["text"], generator=g).half(),
             "clip": torch.randn(batch_size, *shapes["clip"], generator=g),
             "face": face, "face_flip": face.clone(),
             "box": torch.tensor([[16.0, 12.0, 48.0, 52.0]]).expand(batch_size, 4) * uvit_config.img_size / 64}
    return to_device(batch, device)


def benchmark(config: PretrainConfig, *, steps: int = 20, warmup: int = 3, data: str = "synthetic",
              autocast: str | None = None) -> dict:
    """Time full optimizer steps (the training loop's optimizer_step).

    Builds the backbone exactly as train() does (use config.random_backbone for no weight files),
    runs `warmup` untimed steps (compilation happens there), then `steps` timed ones. data: "synthetic"
    (random batches made once on the device: the step alone), "shards" (batches of config.shards
    through the training loop's loader and host-to-device copies, as train() takes them) or "none"
    (that loader alone, no model). autocast "float16" runs the step
    under fp16 autocast without loss scaling instead of the config's mixed precision (the unoptimised
    comparison form, like the reference code's naive step; timing only). Returns samples_per_s (all
    processes), step_s, warmup_s, peak_allocated_gib / peak_reserved_gib (this process's GPU), the
    mean loss of the timed steps and the settings.
    """
    accelerator = Accelerator(mixed_precision="no" if autocast else config.mixed_precision)
    device = accelerator.device
    cuda = device.type == "cuda"
    uvit_config = backbone_config(config)
    if data in ("shards", "none"):
        shards = list_shards(config.shards)
        check_shards(shards, uvit_config)
        if message := too_few_shards(len(shards), accelerator.num_processes, max(config.num_workers, 1)):
            raise DataError(message)
        _, loader = open_batches(config, shards, uvit_config, device, rank=accelerator.process_index,
                                 world=accelerator.num_processes)
        batches = lambda: [to_device(next(loader), device) for _ in range(config.grad_accum)]  # noqa: E731
    elif data == "synthetic":
        fixed = [synthetic_batch(uvit_config, config.batch_size, device, seed=i) for i in range(config.grad_accum)]
        batches = lambda: fixed  # noqa: E731
    else:
        raise ValueError(f"benchmark data must be synthetic, shards or none, not {data!r}")
    losses: list[torch.Tensor] = []
    if data == "none":
        def step() -> None:
            batches()
    else:
        uvit, identity, net, ema, optimizer, scheduler = build(config, device)
        net, optimizer = accelerator.prepare(net, optimizer)
        generator = torch.Generator(device).manual_seed(config.seed)
        schedule, scale = NoiseScheduleVP.stable_diffusion(), latent_scale(config)
        dtype = getattr(torch, autocast) if autocast else None

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype) if autocast else contextlib.nullcontext():
                _, terms, _, _ = optimizer_step(accelerator, net, optimizer, scheduler, ema, batches(), schedule,
                                                config.loss, generator, config.grad_clip, latent_scale=scale)
            losses.append(terms[0])

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    warmup_s = run(warmup)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses.clear()
    dt = run(steps)
    if data in ("shards", "none"):
        loader.close()
    samples = steps * config.batch_size * config.grad_accum * accelerator.num_processes
    return {"samples_per_s": samples / dt, "step_s": dt / steps, "steps": steps, "warmup_steps": warmup,
            "warmup_s": warmup_s, "data": data, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
            "processes": accelerator.num_processes, "num_workers": config.num_workers if data != "synthetic" else None,
            "mean_loss": float(torch.stack(losses).mean()) if losses else None,
            "activation_checkpointing": config.activation_checkpointing,
            "mixed_precision": f"{autocast} autocast, no loss scaling" if autocast else config.mixed_precision,
            "backbone_dtype": config.backbone_dtype, "fused_identity": config.fused_identity,
            "compile_blocks": config.compile_blocks and cuda,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
            "device": torch.cuda.get_device_name(device) if cuda else str(device)}


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON/YAML config file (pretrain/configs/); options below override it")
    p.add_argument("--benchmark", type=int, metavar="STEPS",
                   help="time STEPS optimizer steps on synthetic batches instead of training; prints JSON")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_config_arguments(p)
    args = p.parse_args(argv)
    config = PretrainConfig.from_file(args.config) if args.config else PretrainConfig()
    config = dataclasses.replace(config, **overrides_from_args(args))
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    if args.benchmark:
        from accelerate import PartialState

        result = benchmark(config, steps=args.benchmark)
        if PartialState().is_main_process:
            print(json.dumps(result, indent=1))
    else:
        train(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
