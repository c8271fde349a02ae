"""Where `python -m data_prep --source faceworld` spends its time (the identity stage's shards), on one host.

    python -m eval.bench.world_shards --world checkpoints/world --identities 500 --threads 12,16 \
        --out eval/results/world_shards_h200.json

Each `--threads` setting writes the same shards (identities x 4 renders of training identities, the identity
stage's settings: pretrain.world.identity) into a fresh folder, in this process, and reports items/s (the
shards alone, after the models loaded) and the process's CPU seconds per wall second (how many cores it kept
busy, loading included). The first setting runs once more under
cProfile: the main thread's cumulative seconds in each part of the pipeline, which runs one part after the
other on every batch:

  read          the source: a chunk rendered, then each render PNG-encoded (FaceworldSource.read)
  png_encode    of which the PNG encoding (PIL's Image.save)
  process       SampleProcessor.process: the thread pool's face work (decode, align, augment; the
                recogniser on 3 crops a render), then `features`
  features      the frozen models on the batch: pixel-space moments, world-CLIP text and image features
  encode_sample the tar members (data_prep.format.encode_sample)

The wait for the pool is `process` less `features`. (A generator's cumulative time, such as the pool's
result iterator, counts every resume and can exceed the wall time, so it is not reported.)

`--tiny` runs a few items on the CPU (a wiring check).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from eval.bench.common import report

PARTS = {  # part -> (file suffix, function name) of the function whose cumulative time it is
    "read": ("data_prep/faceworld/source.py", "read"),
    "process": ("data_prep/process.py", "process"),
    "features": ("data_prep/process.py", "features"),
    "encode_sample": ("data_prep/format.py", "encode_sample"),
    "png_encode": ("PIL/Image.py", "save"),
}


def prep_argv(world: str, identities: int, threads: int, out: Path, batch: int) -> list[str]:
    """The identity stage's data_prep command (pretrain.world.identity.IdentityStage.prep_command)."""
    return ["--source", "faceworld", "--split", "train", "--seed", "0", "--identities", str(identities),
            "--photos", "4", "--size", "64", "--face-boxes", "render", "--resolution", "64",
            "--min-image-side", "64", "--min-face-size", "12", "--out", str(out), "--weights", world,
            "--face-pack", str(Path(world) / "faces"), "--shard-size", "2000", "--batch-size", str(batch),
            "--threads", str(threads), "--no-progress"]


def run_once(argv: list[str], profile: bool) -> tuple[dict, pstats.Stats | None]:
    from data_prep.__main__ import build_parser, run

    args = build_parser().parse_args(argv)
    prof = cProfile.Profile() if profile else None
    w0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    manifest = run(args)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    items = manifest["totals"]["input"]
    shards = max(float(manifest["seconds"]), 0.1)  # the shards alone, without loading the models
    row = {"items": items, "written": manifest["totals"]["written"], "seconds": round(wall, 2),
           "shard_seconds": shards, "items_per_s": round(items / shards, 1), "cpu_seconds": round(cpu, 1),
           "cores_busy": round(cpu / wall, 2)}
    return row, (pstats.Stats(prof) if prof else None)


def parts(stats: pstats.Stats, wall: float) -> dict:
    """Main-thread cumulative seconds of each PARTS function (the largest entry when several match), and the
    15 functions with the most time of their own."""
    found: dict[str, float] = {}
    own = []
    for (file, _line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        for part, (suffix, fn) in PARTS.items():
            if name == fn and file.endswith(suffix):
                found[part] = max(found.get(part, 0.0), ct)
        own.append((tt, f"{Path(file).name}:{name}"))
    own.sort(reverse=True)
    return {"main_thread_cumulative_s": {k: round(v, 2) for k, v in found.items()},
            "main_thread_share": {k: round(v / wall, 3) for k, v in found.items()},
            "top_own_time_s": {name: round(tt, 2) for tt, name in own[:15]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default="checkpoints/world", help="the world whose models write the shards")
    p.add_argument("--identities", type=int, default=500, help="training identities (x 4 renders each)")
    p.add_argument("--threads", default="12", help="comma-separated data_prep --threads settings")
    p.add_argument("--batch", type=int, default=256, help="data_prep --batch-size (the stage's: 256)")
    p.add_argument("--tiny", action="store_true", help="a few items (wiring check)")
    p.add_argument("--out", default=None, help="JSON path")
    a = p.parse_args(argv)
    identities, batch = (3, 4) if a.tiny else (a.identities, a.batch)
    threads = [int(t) for t in a.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_once(prep_argv(a.world, 1, threads[0], Path(tmp) / "warmup", 4), profile=False)  # imports, sessions
        for k, t in enumerate(threads):
            row, _ = run_once(prep_argv(a.world, identities, t, Path(tmp) / f"plain{k}", batch), profile=False)
            rows.append({"threads": t, **row})
            print(rows[-1], flush=True)
        row, stats = run_once(prep_argv(a.world, identities, threads[0], Path(tmp) / "profiled", batch), profile=True)
    profiled = {"threads": threads[0], **row, **parts(stats, row["seconds"])}
    result = {"format": "bench-world-shards", "identities": identities, "renders_each": 4, "batch": batch,
              "rows": rows, "profiled": profiled}
    return report(result, a.out, tiny=a.tiny, weights=a.world)


if __name__ == "__main__":
    raise SystemExit(main())
