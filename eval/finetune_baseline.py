"""The per-identity fine-tuning baseline (competition style): DreamBooth-like tuning of the backbone.

    python -m eval.finetune_baseline train -d PHOTOS -o OUT --weights checkpoints/world [--mode lora]
        [--steps 300] [--lr 2e-4] [--device cuda]
    python -m eval.finetune_baseline sample --restore_path OUT --prompt_path P.json --output_path DIR
        --weights checkpoints/world
    python -m eval.finetune_baseline grid --world checkpoints/world --seed S --identities 8
        [--out runs/finetune_grid] [--json eval/results/finetune_grid.json] [--device cuda] [--workers 4]

Per identity, the backbone UViT is tuned on the person's photos with a rare-token caption, "a photo of
a sks <class word>" ("sks" is outside the world's word vocabulary, so it reads as <unk>, a token no
training caption had), either wholly (`full`) or through LoRA adapters on its blocks' linear layers
(`lora`, eval/lora.py). The loss is the identity module's one objective, encoder.objective's
noise-prediction loss (here with text dropout as noise text, so the unconditional pass is tuned
too, and no identity term). The photos are used whole (the world's images are the backbone's own
64 x 64 frame) with random horizontal flips; the LR is constant, so the models after 100 and 300
steps of one 1000-step run are the models 100- and 300-step runs would give. Prompts get the same
token before their class word ("a photo of a sks boy wearing sunglasses") and are sampled through
the same pipeline and generation code as sample.py (models.pipeline, personalize.generate; seed +
prompt index per prompt).

The grid (`grid`) tunes the baseline on validation identities: steps {100, 300, 1000} x two LRs per
mode x {full, lora}, scored like eval.world (identity similarity, edit success), and picks the best
setting: the highest identity similarity among the settings whose edit success is at least
EDIT_FLOOR x text-only's on the same prompts (the bar the identity module itself must clear), else
the highest edit success. eval.world reads the choice from the grid's JSON.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoder.objective import LossConfig, noise_prediction_loss
from models.pixels import to_signed

MODES = ("full", "lora")
GRID_STEPS = (100, 300, 1000)
GRID_LRS = {"full": (2e-5, 1e-4), "lora": (2e-4, 1e-3)}
EDIT_FLOOR = 0.9  # a setting qualifies when its edit success is at least this x text-only's
TOKEN = "sks"
CONFIG_FILE = "finetune.json"
WEIGHTS_FILE = {"full": "uvit.safetensors", "lora": "lora.safetensors"}
DEFAULT_GRID_JSON = Path("eval/results/finetune_grid.json")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning setting. mode: "full" (every UViT weight) or "lora" (rank-`rank` adapters on
    the blocks' linears, scaled alpha / rank); steps at a constant `lr` (AdamW); batch_size photos
    per step, drawn with replacement; flip: random horizontal flips."""

    mode: str = "lora"
    steps: int = 300
    lr: float = 2e-4
    batch_size: int = 4
    rank: int = 8
    alpha: float = 8.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    flip: bool = True
    token: str = TOKEN
    caption: str = "a photo of a {token} {class_word}"
    objective: LossConfig = field(default_factory=lambda: LossConfig(p_drop_id=0.0, p_drop_text=0.1,
                                                                     p_drop_both=0.0))
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"fine-tuning mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be at least 1 and lr positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        d = dict(d)
        if isinstance(d.get("objective"), dict):
            d["objective"] = LossConfig(**d["objective"])
        return cls(**d)


# ------------------------------------------------------------------------------------------ prompts
def rare_token_prompt(prompt: str, class_word: str, token: str = TOKEN) -> str:
    """The prompt with `token` before the first occurrence of the class word ("a photo of a boy" ->
    "a photo of a sks boy"); a prompt without the class word gets "<token> <class word>, " in front,
    so that the person is asked for."""
    pattern = re.compile(rf"(?<![A-Za-z]){re.escape(class_word)}(?![A-Za-z])", re.IGNORECASE)
    if pattern.search(prompt):
        return pattern.sub(lambda m: f"{token} {m.group(0)}", prompt, count=1)
    return f"{token} {class_word}, {prompt}"


def class_word_of(photo_dir: Path) -> str:
    """The class word of a photo folder, from its name as train.py reads it (boy1 -> boy)."""
    from personalize.extract import class_word_for

    return class_word_for(Path(photo_dir), [])[0]


# ------------------------------------------------------------------------------------------- photos
def load_photos(photo_dir: str | Path, size: int) -> np.ndarray:
    """Every photo of the folder as RGB uint8 [N, size, size, 3] (resized when not size x size)."""
    from encoder.photos import list_photos, load_rgb

    paths = list_photos(photo_dir)
    if not paths:
        raise FileNotFoundError(f"no photos in {photo_dir}")
    out = []
    for p in paths:
        rgb = load_rgb(p)
        if rgb.shape[:2] != (size, size):
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
        out.append(rgb)
    return np.stack(out)


@torch.no_grad()
def photo_features(pipe, image_clip, photos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos [N, S, S, 3] uint8 -> (moments [2N, 2C, h, w], image-CLIP [2N, Dc]) float32 on the
    pipeline's device: the photos, then their mirror images (data_prep's features of each)."""
    both = np.concatenate([photos, photos[:, :, ::-1]])
    x = to_signed(both)
    ae_dtype = next(pipe.autoencoder.parameters()).dtype
    moments = pipe.autoencoder.encode_moments(x.to(pipe.device, ae_dtype)).float()
    clip = image_clip.embed_images([Image.fromarray(a) for a in both]).float().to(pipe.device)
    return moments, clip


# ------------------------------------------------------------------------------------------ training
@dataclass
class Snapshot:
    """The tuned backbone after `step` steps: a plain models.uvit.UViT in the pipeline's dtype (LoRA
    merged), the training seconds up to here, and the trained tensors to save (all UViT weights for
    full, the LoRA matrices for lora)."""

    step: int
    uvit: torch.nn.Module
    seconds: float
    tensors: dict[str, torch.Tensor]
    losses: list[float]


class Finetuner:
    """Fine-tunes copies of a pipeline's backbone; the pipeline itself is never changed.

    pipe: models.pipeline.UniDiffuserT2I (its UViT's weights are the starting point, kept as a
    float32 copy on its device); image_clip: the world-CLIP image model (models.image_clip.ImageCLIP).
    """

    def __init__(self, pipe, image_clip):
        self.pipe, self.image_clip = pipe, image_clip
        self.device = pipe.device
        self.base = {k: v.detach().to(self.device, torch.float32).clone() for k, v in pipe.uvit.state_dict().items()}

    def fresh_uvit(self) -> torch.nn.Module:
        from models.uvit import UViT

        with torch.device(self.device):
            model = UViT(self.pipe.uvit.config)
        model.load_state_dict(self.base)
        return model

    def train(self, photo_dir: str | Path, cfg: FinetuneConfig, snapshots: Sequence[int] = (),
              class_word: str | None = None) -> Iterator[Snapshot]:
        """Tune on the folder's photos for cfg.steps steps; yields a Snapshot at each step of
        `snapshots` (<= cfg.steps) and at cfg.steps. Randomness: one generator seeded with cfg.seed."""
        from eval.lora import add_lora, lora_parameters, merge_lora

        pipe, device = self.pipe, self.device
        t0 = time.perf_counter()
        word = class_word or class_word_of(Path(photo_dir))
        photos = load_photos(photo_dir, pipe.image_size)
        moments, clip = photo_features(pipe, self.image_clip, photos)
        n = len(photos)
        text = pipe.encode_text([cfg.caption.format(token=cfg.token, class_word=word)])
        model = self.fresh_uvit()
        if cfg.mode == "lora":
            add_lora(model, cfg.rank, cfg.alpha, seed=cfg.seed)
            params = lora_parameters(model)
        else:
            params = list(model.requires_grad_(True).parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        scale = pipe.autoencoder.config.scale_factor

        def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale):
            with autocast:
                eps_z, eps_c, _ = model(z_n, clip_n, text, t_img, t_text, data_type)
            return eps_z, eps_c

        wanted = sorted({s for s in snapshots if 0 < s < cfg.steps} | {cfg.steps})
        losses: list[float] = []
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen, device=device)
            if cfg.flip:
                idx = idx + n * torch.randint(0, 2, (cfg.batch_size,), generator=gen, device=device)
            loss, _ = noise_prediction_loss(predict, moments[idx], clip[idx], text.expand(len(idx), -1, -1),
                                            pipe.schedule, cfg.objective, gen, latent_scale=scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
            if step in wanted:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - t0
                yield self._snapshot(model, cfg, step, seconds, [float(v) for v in losses], merge_lora)
                t0 = time.perf_counter() - seconds  # snapshot-making time is not training time

    def _snapshot(self, model, cfg: FinetuneConfig, step: int, seconds: float, losses: list[float],
                  merge_lora) -> Snapshot:
        from eval.lora import LoRALinear

        with torch.no_grad():
            if cfg.mode == "lora":
                tensors = {f"{name}.{p}": getattr(m, p).detach().float().cpu().clone()
                           for name, m in model.named_modules() if isinstance(m, LoRALinear)
                           for p in ("lora_a", "lora_b")}
                tuned = merge_lora(copy.deepcopy(model))
            else:
                tuned = copy.deepcopy(model)
                tensors = {k: v.detach().float().cpu().clone() for k, v in tuned.state_dict().items()}
        tuned = tuned.to(self.pipe.dtype).eval().requires_grad_(False)
        return Snapshot(step, tuned, seconds, tensors, losses)

    def load(self, folder: str | Path) -> tuple[torch.nn.Module, dict]:
        """A tuned backbone saved by `save` (merged, in the pipeline's dtype) and its finetune.json."""
        from safetensors.torch import load_file

        from eval.lora import add_lora, merge_lora

        folder = Path(folder)
        info = json.loads((folder / CONFIG_FILE).read_text())
        cfg = FinetuneConfig.from_dict(info["config"])
        tensors = load_file(str(folder / WEIGHTS_FILE[cfg.mode]))
        model = self.fresh_uvit()
        if cfg.mode == "lora":
            add_lora(model, cfg.rank, cfg.alpha, seed=cfg.seed)
            model.load_state_dict(tensors, strict=False)
            missing = [k for k in tensors if k not in model.state_dict()]
            if missing:
                raise ValueError(f"{folder}: LoRA tensors {missing[:3]} do not fit this backbone")
            merge_lora(model)
        else:
            model.load_state_dict(tensors)
        return model.to(self.pipe.dtype).eval().requires_grad_(False), info


def save(snapshot: Snapshot, cfg: FinetuneConfig, folder: str | Path, extra: dict | None = None) -> Path:
    """Write the snapshot's trained tensors and finetune.json (config, class word, seconds) atomically."""
    from safetensors.torch import save_file

    from models.atomic import atomic_write, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILE[cfg.mode], lambda p: save_file(snapshot.tensors, str(p)))
    info = {"format": "faceworld-finetune", "version": 1, "config": {**cfg.to_dict(), "steps": snapshot.step},
            "seconds": snapshot.seconds, "final_loss": snapshot.losses[-1] if snapshot.losses else None,
            **(extra or {})}
    write_json_atomic(folder / CONFIG_FILE, info, indent=1)
    return folder


# ------------------------------------------------------------------------------------------ sampling
def tuned_pipeline(pipe, uvit):
    """The pipeline with the tuned backbone in place of its own (text encoder, pixel space and
    schedule and sampler policy shared), run as sample.py runs it: the fast path on CUDA."""
    from models.execution import Execution
    from models.pipeline import UniDiffuserT2I

    tuned = UniDiffuserT2I(uvit, pipe.autoencoder, pipe.text_encoder, pipe.schedule, device=pipe.device,
                           dtype=pipe.dtype, weight_files=pipe.weight_files, final_denoise=pipe.final_denoise)
    if pipe.device.type == "cuda":
        tuned.execution = Execution.fast_path(pipe.device, pipe.dtype, None)
    return tuned


def sample_tuned(pipe, uvit, prompts: list[str], class_word: str, out_dir: str | Path, opts,
                 token: str = TOKEN, fingerprint: dict | None = None, progress: bool = False) -> dict:
    """Generate the prompts (rare token inserted) with the tuned backbone through
    personalize.generate.generate_prompts (no identity tokens): images <i>-<k:03>.jpg like sample.py."""
    from personalize.generate import generate_prompts

    tuned = tuned_pipeline(pipe, uvit)
    asked = [rare_token_prompt(p, class_word, token) for p in prompts]
    return generate_prompts(tuned, tuned.execution.net(tuned.uvit), None, asked, out_dir, opts, progress=progress,
                            fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------------- CLI
def _load(weights, device_name: str):
    from models.device import pick_device, pick_dtype
    from models.image_clip import ImageCLIP
    from models.pipeline import UniDiffuserT2I

    device = pick_device(device_name)
    pipe = UniDiffuserT2I.from_pretrained(weights, device=device, dtype=pick_dtype("auto", device))
    return pipe, ImageCLIP.from_pretrained(weights, device=device)


def cmd_train(args) -> int:
    t0 = time.perf_counter()
    cfg = FinetuneConfig(mode=args.mode, steps=args.steps, lr=args.lr, batch_size=args.batch_size, rank=args.rank,
                         alpha=args.alpha, seed=args.seed)
    pipe, clip = _load(args.weights, args.device)
    tuner = Finetuner(pipe, clip)
    word = class_word_of(Path(args.data))
    snap = next(iter(tuner.train(args.data, cfg, class_word=word)))
    save(snap, cfg, args.output, {"class_word": word, "photos": str(args.data)})
    print(f"fine-tuned ({cfg.mode}, {cfg.steps} steps, lr {cfg.lr:g}) on {args.data} in {snap.seconds:.2f} s; "
          f"final loss {snap.losses[-1]:.4f}; written to {args.output}; total {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_sample(args) -> int:
    from personalize.generate import GenerateOptions
    from personalize.prompts import load_prompts

    pipe, clip = _load(args.weights, args.device)
    uvit, info = Finetuner(pipe, clip).load(args.restore_path)
    opts = GenerateOptions(n_per_prompt=args.n, steps=args.steps, cfg=args.cfg, seed=args.seed)
    summary = sample_tuned(pipe, uvit, load_prompts(args.prompt_path), info["class_word"], args.output_path, opts,
                           token=info["config"]["token"], fingerprint={"finetune": info}, progress=not args.quiet)
    print(f"{summary['prompts_written']} prompts generated, {summary['prompts_skipped']} already done; "
          f"{args.n} images each in {args.output_path}")
    return 0


def grid_settings(steps: Sequence[int] = GRID_STEPS, lrs: dict[str, Sequence[float]] | None = None,
                  modes: Sequence[str] = MODES) -> list[tuple[str, float, int]]:
    """(mode, lr, steps) of every grid point."""
    lrs = lrs or GRID_LRS
    return [(m, lr, s) for m in modes for lr in lrs[m] for s in steps]


def _num(x) -> float:
    return float("-inf") if x is None else float(x)


def pick_best(rows: list[dict], text_only_edit: float, floor: float = EDIT_FLOOR) -> dict:
    """The best grid row (see the module docstring): rows have mode, lr, steps, identity_similarity,
    edit_success."""
    ok = [r for r in rows if _num(r["edit_success"]) >= floor * text_only_edit]
    if ok:
        best = max(ok, key=lambda r: (_num(r["identity_similarity"]), r["edit_success"]))
        why = f"highest identity similarity with edit success >= {floor:g} x text-only's ({text_only_edit:.3f})"
    else:
        best = max(rows, key=lambda r: (_num(r["edit_success"]), _num(r["identity_similarity"])))
        why = f"no setting reached {floor:g} x text-only's edit success ({text_only_edit:.3f}): highest edit success"
    return {"mode": best["mode"], "lr": best["lr"], "steps": best["steps"], "why": why}


def cmd_grid(args) -> int:
    """Tune on validation identities; score every grid point; write the grid JSON."""
    from eval.world import grid_search

    result = grid_search(args)
    if args.part:  # a worker of --workers: its units are written, the parent aggregates
        return 0
    print(json.dumps({"best": result["best"]}, indent=1))
    print(f"written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.finetune_baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune the backbone on one person's photos")
    t.add_argument("-d", "--data", required=True, help="photo folder of one person (its name gives the class word)")
    t.add_argument("-o", "--output", required=True, help="folder for the tuned weights + finetune.json")
    t.add_argument("--weights", default=None, help="weights folder (the world folder)")
    t.add_argument("--mode", choices=MODES, default="lora")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--alpha", type=float, default=8.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    s = sub.add_parser("sample", help="generate a prompt file with a tuned backbone (sample.py's layout)")
    s.add_argument("--restore_path", required=True, help="folder written by `train`")
    s.add_argument("--prompt_path", required=True)
    s.add_argument("--output_path", required=True)
    s.add_argument("--weights", default=None)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--cfg", type=float, default=7.0)
    s.add_argument("--n", type=int, default=3)
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    g = sub.add_parser("grid", help="the steps x LR x mode grid on validation identities")
    g.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder")
    g.add_argument("--seed", type=int, required=True, help="renderer seed of the validation identities")
    g.add_argument("--identities", type=int, default=8, help="validation identities (default 8)")
    g.add_argument("--photos", type=int, default=3, help="photos per identity (default 3)")
    g.add_argument("--prompts", type=int, default=4, help="prompts of each layout per identity (default 4)")
    g.add_argument("--steps", default=",".join(map(str, GRID_STEPS)), help="grid steps (comma-separated)")
    g.add_argument("--modes", default=",".join(MODES))
    g.add_argument("--sample-steps", type=int, default=30)
    g.add_argument("--out", type=Path, default=None, help="work folder (default runs/finetune_grid/seed<S>)")
    g.add_argument("--json", type=Path, default=DEFAULT_GRID_JSON)
    g.add_argument("--device", default="auto")
    g.add_argument("--workers", type=int, default=1,
                   help="train the grid's (mode, LR) runs in this many processes at once on the one device "
                        "(a small backbone leaves a GPU mostly idle); default 1")
    g.add_argument("--part", default=None, help=argparse.SUPPRESS)  # I/N: a worker's share (--workers)
    return p


def main(argv: list[str] | None = None) -> int:
    from data_prep.faceworld.render import use_folder_version

    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.command == "grid":
        use_folder_version(args.world)  # validation identities drawn as the world's models saw renders
    return {"train": cmd_train, "sample": cmd_sample, "grid": cmd_grid}[args.command](args)


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
