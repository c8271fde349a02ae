"""The identity module in the world: data_prep on renders of training identities, then pretrain.train.

    python -m pretrain.world train identity --out runs/world --world checkpoints/world [--minutes 9]
        [--device cuda] [--tiny]

Needs the world's backbone, world-CLIP and face pack (the clip, backbone and faces stages). The
identity module is trained exactly as on a real corpus, by the project's own commands, run here as
subprocesses (so that a time budget can stop them; each resumes on its own):

1. shards: `python -m data_prep --source faceworld --split train ...` writes <out>/identity/shards/
   (recogniser embeddings with the face pack's fingerprint, world-CLIP text and image features,
   pixel-space moments, identity labels; a rerun skips finished shards);
2. pretraining: `python -m pretrain.train --config pretrain/configs/world.json` on those shards with
   the world folder as weights and identity pairing on, into <out>/identity/run/ (a rerun resumes
   exactly from its last checkpoint; checkpoint files are a few MB each);
3. export: the run's EMA module (<out>/identity/run/faceid_encoder/) is copied to
   <world>/faceid_encoder/, and the run's logged curves (log.json) are drawn to <out>/identity/curves.png.

`--total-steps N` sets pretraining's `max_steps` (a new run); without it, a new run under `--minutes`
gets the steps that fit the time left after the shards (`sized_steps`: a short `--benchmark` first).
Shards are written even before the backbone exists (the backbone stage writes the pixel space
first); pretraining then waits for it.

With `--minutes M` the stage stops whatever runs when M minutes are over (pretraining loses the steps
since its last checkpoint, `checkpoint_every` in the config) and says to rerun. `--tiny` runs a few
identities and two pretraining steps on the CPU (tests, `scripts/world.sh --tiny`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from models.errors import UserError
from pretrain.checkpoint import CHECKPOINTS
from pretrain.world.common import StageOptions

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pretrain" / "configs" / "world.json"
EXPORT_DIR = "faceid_encoder"
STOP_GRACE_S = 60  # after SIGINT, seconds a stopped command gets before SIGKILL


@dataclass(frozen=True)
class IdentityStageConfig:
    """The shards (identities x photos renders of training identities, data_prep's batch and threads)
    and the pretraining config file with its overrides (PretrainConfig fields as `--name value`)."""

    identities: int = 12000
    photos: int = 4
    first_identity: int = 0
    shard_size: int = 2000
    prep_batch: int = 256
    prep_threads: int = 12
    step_margin: float = 0.7  # of the benchmarked rate, when the step budget is sized to the time left
    face_boxes: str = "render"  # "render": the renderer's face box and landmarks; "detector": the world's
    min_face_size: int = 12
    config: str = str(CONFIG.relative_to(REPO))
    overrides: tuple[str, ...] = ()

    @classmethod
    def tiny(cls) -> IdentityStageConfig:
        return cls(identities=3, photos=2, shard_size=6, prep_batch=8, prep_threads=1,
                   overrides=("--max_steps", "2", "--batch_size", "2", "--num_workers", "0", "--backbone_dtype",
                              "float32", "--mixed_precision", "no", "--hidden_dim", "16", "--warmup_steps", "1",
                              "--checkpoint_every", "1", "--log_every", "1", "--sample_every", "0",
                              "--shuffle_buffer", "4", "--shards_per_group", "1", "--val_identities", "1",
                              "--val_holdout_shards", "0"))  # one shard: validation reads it too


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the command's process group, SIGKILL after STOP_GRACE_S."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_command(argv: list[str], deadline: float | None, env: dict | None = None) -> bool:
    """Run a command from the repository root in its own process group (environment `env`, default
    this one's); True when it finished, False when `deadline` (time.monotonic) stopped it. A failing
    command stops the stage."""
    print(f"[identity] $ {' '.join(argv[1:])}", flush=True)
    proc = subprocess.Popen(argv, cwd=REPO, start_new_session=True, env=env)
    try:
        proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(proc)
        return False
    except BaseException:
        _stop(proc)
        raise
    if proc.returncode:
        raise UserError(f"[identity] {' '.join(argv[1:3])} ... exited with {proc.returncode}",
                        hint="its own message is printed above")
    return True


class IdentityStage:
    """The `identity` stage of `python -m pretrain.world train` (a stage that runs commands: `run()`
    instead of the step loop of pretrain.world.common.Stage)."""

    name = "identity"

    def __init__(self, opts: StageOptions):
        self.opts = opts
        self.c = IdentityStageConfig.tiny() if opts.tiny else IdentityStageConfig()
        self.folder, self.shards, self.run_dir = self.layout(opts.out)

    @classmethod
    def layout(cls, out: Path) -> tuple[Path, Path, Path]:
        """The stage's folder in the runs folder `out`, its shards and its pretraining run."""
        folder = out / cls.name
        return folder, folder / "shards", folder / "run"

    @classmethod
    def finished(cls, out: Path, world: Path) -> bool:
        """Whether the stage's pretraining has exported its module and the world holds it (as
        pretrain.world.common.Stage.finished says for a stage of steps)."""
        _, _, run_dir = cls.layout(out)
        return (run_dir / EXPORT_DIR / "config.json").is_file() and (world / EXPORT_DIR / "config.json").is_file()

    @classmethod
    def left_behind(cls, out: Path, world: Path) -> list[Path]:
        """What a rerun does not read (as pretrain.world.common.Stage.left_behind): the shards (written again
        while the module is not exported) and, once it is, the pretraining run's checkpoints."""
        _, shards, run_dir = cls.layout(out)
        return [shards, *([run_dir / CHECKPOINTS] if cls.finished(out, world) else [])]

    # ---- the commands
    def prep_command(self) -> list[str]:
        c, world = self.c, self.opts.world
        return [sys.executable, "-m", "data_prep", "--source", "faceworld", "--split", "train",
                "--seed", str(self.opts.seed), "--identities", str(c.identities), "--photos", str(c.photos),
                "--first-identity", str(c.first_identity), "--size", "64", "--face-boxes", c.face_boxes,
                "--resolution", "64", "--min-image-side", "64", "--min-face-size", str(c.min_face_size),
                "--out", str(self.shards), "--weights", str(world), "--face-pack", str(world / "faces"),
                "--shard-size", str(c.shard_size), "--batch-size", str(c.prep_batch),
                "--threads", str(c.prep_threads), "--no-progress"]

    def pretrain_command(self, max_steps: int | None = None) -> list[str]:
        max_steps = self.opts.total_steps or max_steps
        steps = ("--max_steps", str(max_steps)) if max_steps else ()
        return [sys.executable, "-m", "pretrain.train", "--config", self.c.config, "--shards", str(self.shards),
                "--weights", str(self.opts.world), "--output_dir", str(self.run_dir), "--seed", str(self.opts.seed),
                *self.c.overrides, *steps]

    def sized_steps(self, seconds: float, env: dict | None) -> int | None:
        """A new run's max_steps for `seconds` of pretraining: `pretrain.train --benchmark` (its step
        on synthetic batches) times step_margin, which leaves room for start-up, the loader, the
        diagnostic and checkpoints. None when the benchmark fails (the config's max_steps then)."""
        argv = [*self.pretrain_command(), "--benchmark", "20"]  # the run's config, overrides and weights
        print(f"[{self.name}] sizing the step budget to {seconds:.0f} s: $ {' '.join(argv[1:])}", flush=True)
        try:
            out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            result = json.loads(out.stdout[out.stdout.index("{"):])
        except (subprocess.TimeoutExpired, ValueError) as e:
            print(f"[{self.name}] benchmark failed ({e}); keeping the config's max_steps", flush=True)
            return None
        steps = int(self.c.step_margin * result["samples_per_s"] / result["batch_size"] * max(0.0, seconds - 60))
        print(f"[{self.name}] benchmark {result['samples_per_s']:.0f} samples/s at batch {result['batch_size']}: "
              f"max_steps {steps}", flush=True)
        return max(steps, 100)

    def shards_done(self) -> bool:
        path = self.shards / "manifest.json"
        return path.is_file() and bool(json.loads(path.read_text()).get("complete"))

    def exported(self) -> Path:
        return self.run_dir / EXPORT_DIR

    # ---- the stage
    def run(self) -> dict:
        """Shards, pretraining, export; each step skipped when done. Returns what was done."""
        opts = self.opts
        deadline = None if opts.minutes is None else time.monotonic() + 60 * opts.minutes
        env = None
        if opts.device.type == "cpu":  # the commands must not pick a GPU on their own
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        done = {"shards": self.shards_done(), "pretrained": (self.exported() / "config.json").is_file()}
        if not done["shards"] and not done["pretrained"]:  # a module exported needs its shards no more
            if not run_command(self.prep_command(), deadline, env) or not self.shards_done():
                print(f"[{self.name}] shards not finished; rerun to continue", flush=True)
                return {"done": False, **done}
            done["shards"] = True
        if not done["pretrained"] and opts.max_steps == 0:  # --steps 0: the shards only
            print(f"[{self.name}] shards done (--steps 0: no pretraining this call)", flush=True)
            return {"done": False, **done}
        if not done["pretrained"] and not (opts.world / "models" / "uvit_v1.safetensors").is_file():
            # shards can be written while the backbone stage still trains (scripts/world_gpu_call.sh)
            print(f"[{self.name}] shards done; pretraining waits for the backbone ({opts.world}/models/"
                  "uvit_v1.safetensors): rerun once the backbone stage has exported it", flush=True)
            return {"done": False, **done}
        if not done["pretrained"]:
            max_steps = None
            if (deadline is not None and not opts.tiny and not opts.total_steps
                    and not (self.run_dir / CHECKPOINTS).is_dir()):
                max_steps = self.sized_steps(deadline - time.monotonic(), env)
            finished = run_command(self.pretrain_command(max_steps), deadline, env)
            if not finished or not (self.exported() / "config.json").is_file():
                print(f"[{self.name}] pretraining not finished; rerun to continue (it resumes from "
                      f"{self.run_dir / CHECKPOINTS})", flush=True)
                return {"done": False, **done}
            done["pretrained"] = True
        target = export(self.exported(), opts.world / EXPORT_DIR)
        curves = plot_curves(self.run_dir, self.folder / "curves.png")
        print(f"[{self.name}] exported {target}" + (f"; curves in {curves}" if curves else ""), flush=True)
        return {"done": True, **done, "exported": target, "curves": curves}


def export(source: Path, target: Path) -> Path:
    """Copy the exported identity module folder to `target` (a copy assembled beside it, renamed into
    place); nothing is done when `target` already holds the same checkpoint."""
    from encoder.identity import checkpoint_hash

    if (target / "config.json").is_file() and checkpoint_hash(target) == checkpoint_hash(source):
        return target
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the run's log.json records (pretrain.logs: "loss/loss", ...; the identity
    diagnostic's fields as "identity/<field>"): the whole run, also across resumed calls, where TensorBoard's
    reader drops the steps before a restart. Its TensorBoard logs (<run_dir>/tb) where there is no log.json;
    empty when there is neither."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    if (run_dir / "log.json").is_file():
        for record in json.loads((run_dir / "log.json").read_text()).get("records", []):
            prefix = "identity/" if record.get("kind") == "identity" else ""
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    scalars.setdefault(prefix + key, []).append((int(record["step"]), float(value)))
        return scalars
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return scalars
    if (run_dir / "tb").is_dir():
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}
    return scalars


def plot_curves(run_dir: Path, path: Path) -> Path | None:
    """The run's scalar curves (loss terms, gradient norm, learning rate, any diagnostics it logs), one
    panel each, to `path` (PNG); None when there is nothing to draw or no matplotlib."""
    scalars = read_scalars(run_dir)
    if not scalars:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tags = sorted(scalars)
    cols = min(3, len(tags))
    rows = (len(tags) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        steps, values = zip(*scalars[tag])
        ax.plot(steps, values, lw=1)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from models.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path

