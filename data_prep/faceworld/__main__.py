"""python -m data_prep.faceworld render | bench: photo folders and prompt files of rendered people; speed.

    python -m data_prep.faceworld render --seed 7 --identities 4 --photos 10 --out runs/world-test

writes, for people of the chosen split (default test) under a seed of your choice:

    OUT/<name>/000.jpg ...            one folder of K photos per person (images only: faces are found
                                      from the pixels, as for a user's photos); names like boy1, girl2
    OUT/eval_prompts/<name>.json      all prompts of a person (JSON list of strings)
    OUT/eval_prompts/<name>_sim.json  reproduction prompts ("a photo of a boy")
    OUT/eval_prompts/<name>_edit.json editing prompts, two of them held-out attribute pairs
    OUT/faceworld.json                for scoring only: seed, identity indices, class words, photo and
                                      prompt attributes (keep it out of what a method may read)

Identity i of a split is identity index SPLITS[split][0] + --first + i; the same seed, split and
indices always give the same pixels. Training shards come from `python -m data_prep --source faceworld`.

    python -m data_prep.faceworld bench --size 64 --batch 256 [--device cuda]

renders batches and prints renders per second (wall clock, and per CPU second of this process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from data_prep.faceworld.attributes import SPLITS
from data_prep.faceworld.folders import write_folders
from data_prep.faceworld.render import SIZES, VERSION_ENV, VERSIONS, FaceWorld, folder_version


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.faceworld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="photo folders + prompt files (competition layout)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--seed", type=int, required=True, help="world seed: who the people are")
    r.add_argument("--identities", type=int, required=True, help="number of people")
    r.add_argument("--photos", type=int, required=True, help="photos per person")
    r.add_argument("--out", required=True, help="output folder (new or empty)")
    r.add_argument("--split", choices=sorted(SPLITS), default="test",
                   help="identity range: " + ", ".join(f"{k} [{a}, {b})" for k, (a, b) in SPLITS.items())
                   + " (default test)")
    r.add_argument("--first", type=int, default=0, help="skip this many identities of the split (default 0)")
    r.add_argument("--size", type=int, choices=SIZES, default=64, help="image side in pixels (default 64)")
    r.add_argument("--edits", type=int, default=6, help="edit prompts per person (default 6)")
    r.add_argument("--format", choices=["jpg", "png"], default="jpg", help="photo file format (default jpg)")
    r.add_argument("--device", default="cpu", help="torch device for rendering (default cpu)")
    r.add_argument("--version", choices=sorted(VERSIONS), default=None,
                   help=f"renderer version (default: ${VERSION_ENV}, else the version the embedded world's models were "
                        "trained on, its renderer.json: checkpoints/world or $UNIDIFFUSER_DEMO_WORLD)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    b = sub.add_parser("bench", help="renders per second")
    b.add_argument("--size", type=int, choices=SIZES, default=64, help="image side (default 64)")
    b.add_argument("--batch", type=int, default=256, help="renders per call (default 256)")
    b.add_argument("--chunk", type=int, default=64, help="renders drawn at once inside a call (default 64)")
    b.add_argument("--repeats", type=int, default=5, help="timed calls (default 5)")
    b.add_argument("--device", default="cpu", help="torch device (default cpu, one thread)")
    return p


def bench(args) -> None:
    import torch

    world = FaceWorld(0, size=args.size, device=args.device, chunk=args.chunk)
    ids = np.arange(args.batch)
    world.render(ids, 0)  # warm-up
    walls, cpus = [], []
    for k in range(args.repeats):
        if world.device.type == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        world.render(ids + (k + 1) * args.batch, 0)
        if world.device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    best, median = args.batch / min(walls), args.batch / np.median(walls)
    print(f"faceworld {args.size}x{args.size} on {args.device}, batch {args.batch}, chunk {args.chunk}: "
          f"{best:.0f} renders/s (best of {args.repeats}; median {median:.0f}), "
          f"{args.batch / min(cpus):.0f} per CPU second")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        bench(args)
        return 0
    from models.check_weights import demo_world

    version = args.version or os.environ.get(VERSION_ENV) or folder_version(demo_world())
    side = write_folders(args.out, seed=args.seed, identities=args.identities, photos=args.photos,
                         split=args.split, first=args.first, size=args.size, edits=args.edits, fmt=args.format,
                         device=args.device, progress=not args.no_progress, version=version)
    names = ", ".join(p["name"] for p in side["people"][:8]) + (" ..." if len(side["people"]) > 8 else "")
    print(f"{args.out}: {len(side['people'])} people x {args.photos} photos of {side['renderer']} ({names}); "
          f"prompts in {args.out}/eval_prompts; scoring data in {args.out}/faceworld.json")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
