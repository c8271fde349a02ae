"""The world's training CLI: every stage, chunked and resumable.

    python -m pretrain.world list                       # registered stages, in the order world.sh runs them
    python -m pretrain.world evaluate --world checkpoints/world --seed S --out eval/results/world_foundation.json
        [--device cuda] [--tiny]                        # the world's quality (pretrain/world/evaluate.py)
    python -m pretrain.world train clip --out runs/world --world checkpoints/world [--minutes 9] [--steps N] [--tiny]
        [--device cuda] [--seed 0]
    python -m pretrain.world finished clip --out runs/world --world checkpoints/world   # exit 0, or 3 when not
    python -m pretrain.world pack --out runs/world --world checkpoints/world --to DIR   # for the next machine

A stage is registered with one line in STAGES: its name -> "module:Class" of a
pretrain.world.common.Stage subclass (imported only when that stage runs).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from data_prep.faceworld.render import use_folder_version
from models.errors import UserError, number, run_cli
from pretrain.world import evaluate
from pretrain.world.common import Stage, StageOptions, gain_list, run_stage

NOT_FINISHED = 3  # exit status of `finished` for a stage that has not trained its whole total yet

# name -> "module:Class"; scripts/world.sh runs them in this order (the backbone needs the world-CLIP).
STAGES: dict[str, str] = {
    "clip": "pretrain.world.clip:ClipStage",
    "autoencoder": "pretrain.world.autoencoder:AutoencoderStage",  # used by `train backbone --space autoencoder`
    "backbone": "pretrain.world.backbone:BackboneStage",
    "faces": "pretrain.world.faces:RecogniserStage",  # conditioning recogniser + pack.json -> <world>/faces/
    "face_detector": "pretrain.world.faces:DetectorStage",  # SCRFD-signature detector -> <world>/faces/
    "eval_faces": "pretrain.world.faces:EvalRecogniserStage",  # evaluation recogniser -> <world>/eval_faces/
    "attributes": "pretrain.world.attributes:AttributeStage",  # attribute classifier -> <world>/attributes/
    "identity": "pretrain.world.identity:IdentityStage",  # data_prep + pretrain.train -> <world>/faceid_encoder/
}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}", hint=f"stages: {', '.join(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.world", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the registered stages, one a line, in run order")
    t = sub.add_parser("train", help="train (or resume) one stage; export it when its step budget is done")
    t.add_argument("stage", help=f"one of: {', '.join(STAGES)}")
    t.add_argument("--out", type=Path, default=Path("runs/world"), help="runs folder (<out>/<stage>/checkpoint/)")
    t.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder (exports)")
    t.add_argument("--minutes", type=float, default=None,
                   help="stop and save after this many minutes of training (start-up and export come on top)")
    t.add_argument("--steps", type=int, default=None, help="stop and save after this many steps (this call)")
    t.add_argument("--export-when-stopped", action="store_true",
                   help="when --minutes or --steps stops the run before its total, export the weights as they are "
                        "too (the EMA; the learning rate has not decayed): a time-limited GPU call keeps what it "
                        "trained instead of leaving only a checkpoint; rerunning still resumes. With --steps 0: "
                        "export the checkpoint as it stands, no step (to evaluate a run midway, on any device)")
    t.add_argument("--total-steps", type=int, default=None, help="replace the stage's step budget (new runs)")
    t.add_argument("--init-from", type=Path, default=None,
                   help="backbone: start a new run from these exported UViT weights (a continued run: fresh "
                        "optimizer, 100 warm-up steps); clip: from this exported world-CLIP folder (its tokenizer "
                        "and config, fresh optimizer); attributes: from this exported classifier folder (a quarter "
                        "of the learning rate)")
    t.add_argument("--final-conv", action=argparse.BooleanOptionalAction, default=None,
                   help="backbone only: U-ViT's final 3x3 conv over the image output (smooths 4x4-patch seams; "
                        "default on); with --init-from from weights without it, it starts as the identity")
    t.add_argument("--compile", action="store_true",
                   help="backbone and autoencoder only: run the training forward under torch.compile (CUDA only; "
                        "time it first with `python -m eval.bench.world_backbone` / `eval.bench.world_autoencoder`)")
    t.add_argument("--render-workers", type=int, default=0, metavar="P",
                   help="backbone and autoencoder only: draw the training renders on P CPU processes instead of "
                        "the training device (default 0; time it first with `python -m eval.bench.world_backbone`)")
    t.add_argument("--batch-reuse", type=int, default=1, metavar="R",
                   help="backbone and autoencoder only: train R steps on each rendered batch (the backbone with "
                        "fresh noise and timesteps; default 1; R > 1 when rendering, not the step, limits the "
                        "rate; part of the run's config)")
    t.add_argument("--patch-size", type=int, default=None, metavar="P",
                   help="backbone only: the UViT's patch side for a new run (default the config's, 4 at 64 px; 2 "
                        "quadruples the image tokens, for small details; time it first with `python -m "
                        "eval.bench.world_backbone --patch-size 2`; part of the run's config)")
    t.add_argument("--level-gains", type=gain_list, default=None, metavar="G1,G2,..",
                   help="backbone only: the pixel space's gain per Haar band, finest (2 px) first, the last for "
                        "everything coarser (default 1,1,0.6,0.3: small details stay above the noise longer "
                        "while the prompt still sets the large areas; with --init-from, the gains exported "
                        "beside those weights; 0.3 is one gain for all; "
                        "models.pixel_space; part of the run's config, exported with the weights)")
    t.add_argument("--eps-steps", type=int, default=None, metavar="N",
                   help="backbone only: the first N steps use the plain noise MSE, then the run's \"v\" weighting "
                        "(default 3000 for a new run, 0 with --init-from; part of the run's config)")
    t.add_argument("--face-weight", type=float, default=None, metavar="W",
                   help="backbone and autoencoder only: weigh the image term's (the reconstruction's) error W "
                        "times as much inside the render's face box (widened by a quarter on each side; in an "
                        "autoencoder's latent, the cells it maps to) as outside, each image's weights averaging 1 "
                        "(default 1: the plain mean; W > 1 spends more of the model on the face's small details; "
                        "part of the run's config)")
    t.add_argument("--space", choices=("pixel", "autoencoder"), default=None,
                   help="backbone only: the latent space it denoises: the pixel space (models.pixel_space) or the "
                        "world's AutoencoderKL (<world>/autoencoder/, the autoencoder stage; the patch side then "
                        "defaults to give as many image tokens); default: the space exported beside --init-from's "
                        "weights, else pixel; part of the run's config, exported with the weights")
    t.add_argument("--hard-negatives", action="store_true",
                   help="clip only: contrast each image with its caption changed in one stated attribute too "
                        "(NegCLIP's hard negatives), so that small details such as expressions count; part of the "
                        "run's config")
    t.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="clip, autoencoder and attributes only: renders per step (default 512, 256 and 256; "
                        "smaller for a CPU run; part of the run's config)")
    t.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="backbone only: the peak learning rate (default 3e-4; the warm-up and the cosine decay over "
                        "the total steps follow it; part of the run's config)")
    t.add_argument("--downsample", type=int, choices=(2, 4, 8), default=None, metavar="F",
                   help="autoencoder only: the latent's downsampling, 2, 4 or 8 (default 4: 64 px renders become "
                        "16 x 16 latents; 2 keeps more detail, and the backbone's patch follows; part of the run's "
                        "config)")
    t.add_argument("--latent-channels", type=number(int, low=1), default=None, metavar="C",
                   help="autoencoder only: the latent's channels (default 4, as UniDiffuser's; part of the run's "
                        "config)")
    t.add_argument("--tiny", action="store_true", help="tiny configs and a few steps (CPU tests)")
    t.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    t.add_argument("--seed", type=int, default=0, help="world seed")
    t.add_argument("--log-every", type=int, default=None, help="log one line every N steps")
    f = sub.add_parser("finished", help=f"exit 0 when the stage has trained its whole total, "
                                        f"{NOT_FINISHED} when a rerun of `train` would go on training it")
    f.add_argument("stage", help=f"one of: {', '.join(STAGES)}")
    f.add_argument("--out", type=Path, default=Path("runs/world"), help="runs folder, as given to `train`")
    f.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder, as given to "
                   "`train`")
    k = sub.add_parser("pack", help="pack what a rerun of scripts/world.sh needs into pieces under 15 MiB, for the "
                                    "next machine (pretrain/world/travel.py); unpack with `cat DIR/world_state.tar.* "
                                    "| tar -x` in the same folder")
    k.add_argument("--out", type=Path, default=Path("runs/world"), help="runs folder, as given to `train`")
    k.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder, as given to "
                   "`train`")
    k.add_argument("--to", type=Path, required=True, help="folder for the pieces (world_state.tar.000, ...)")
    e = sub.add_parser("evaluate", help="measure the world's quality; write its JSON (pretrain/world/evaluate.py)")
    evaluate.add_arguments(e)
    return p.parse_args(argv)


def check_stage_flags(args: argparse.Namespace) -> None:
    """Refuse a `train` flag given to a stage it does not apply to, and out-of-range values (UserError)."""
    backbone, clip = ("backbone",), ("clip",)
    for flag, given, stages in (("--init-from", args.init_from is not None, ("backbone", "clip", "attributes")),
                                ("--final-conv", args.final_conv is not None, backbone),
                                ("--compile", args.compile, ("backbone", "autoencoder")),
                                ("--render-workers", args.render_workers > 0, ("backbone", "autoencoder")),
                                ("--batch-reuse", args.batch_reuse != 1, ("backbone", "autoencoder")),
                                ("--patch-size", args.patch_size is not None, backbone),
                                ("--level-gains", args.level_gains is not None, backbone),
                                ("--eps-steps", args.eps_steps is not None, backbone),
                                ("--lr", args.lr is not None, backbone),
                                ("--face-weight", args.face_weight is not None, ("backbone", "autoencoder")),
                                ("--space", args.space is not None, backbone),
                                ("--hard-negatives", args.hard_negatives, clip),
                                ("--batch-size", args.batch_size is not None, ("clip", "autoencoder", "attributes")),
                                ("--downsample", args.downsample is not None, ("autoencoder",)),
                                ("--latent-channels", args.latent_channels is not None, ("autoencoder",))):
        if given and args.stage not in stages:
            where = f"{', '.join(stages[:-1])} and {stages[-1]} stages" if len(stages) > 1 else f"{stages[0]} stage"
            raise UserError(f"{flag} applies to the {where} only, not {args.stage!r}")
    if args.batch_size is not None and args.batch_size < 2:
        raise UserError(f"--batch-size must be 2 or more, got {args.batch_size}")
    if args.steps is not None and args.steps < 0:
        raise UserError(f"--steps must be 0 or more, got {args.steps}")
    if args.render_workers < 0:
        raise UserError(f"--render-workers must be 0 or more, got {args.render_workers}")
    if args.batch_reuse < 1:
        raise UserError(f"--batch-reuse must be 1 or more, got {args.batch_reuse}")
    if args.eps_steps is not None and args.eps_steps < 0:
        raise UserError(f"--eps-steps must be 0 or more, got {args.eps_steps}")
    if args.face_weight is not None and not args.face_weight > 0:
        raise UserError(f"--face-weight must be positive, got {args.face_weight}")
    if args.lr is not None and not 0 < args.lr < 1:
        raise UserError(f"--lr must be between 0 and 1, got {args.lr}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "list":
        print("\n".join(STAGES))
        return 0
    if args.command == "evaluate":
        return evaluate.run(args, evaluate.command_line(argv))
    if args.command == "pack":
        from pretrain.world.travel import pack

        made = pack(args.out, args.world, args.to, {name: stage_class(name) for name in STAGES})
        print(f"packed {made['files']} files ({made['bytes'] / 2**20:.1f} MiB) in {len(made['pieces'])} pieces: "
              f"{', '.join(str(p) for p in made['pieces'])}; unpack with `cat {args.to}/world_state.tar.* | tar -x`")
        return 0
    if args.command == "finished":
        done = stage_class(args.stage).finished(args.out, args.world)
        print(f"{args.stage}: {'finished' if done else 'not finished'}")
        return 0 if done else NOT_FINISHED
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    log_every = args.log_every or (1 if args.tiny else 50)
    opts = StageOptions(out=args.out, world=args.world, device=device, tiny=args.tiny, minutes=args.minutes,
                        max_steps=args.steps, export_when_stopped=args.export_when_stopped,
                        total_steps=args.total_steps, seed=args.seed, log_every=log_every,
                        init_from=args.init_from, final_conv=args.final_conv, compile=args.compile,
                        render_workers=args.render_workers, batch_reuse=args.batch_reuse,
                        patch_size=args.patch_size, level_gains=args.level_gains, eps_steps=args.eps_steps,
                        face_weight=args.face_weight, space=args.space, hard_negatives=args.hard_negatives,
                        batch_size=args.batch_size, downsample=args.downsample,
                        latent_channels=args.latent_channels, lr=args.lr)
    check_stage_flags(args)
    use_folder_version(args.world)  # a world trained on another renderer version goes on with it
    stage = stage_class(args.stage)(opts)
    if isinstance(stage, Stage):
        run_stage(stage)
    else:  # a stage that runs commands (pretrain.world.identity): its own run()
        stage.run()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
