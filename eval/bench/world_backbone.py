"""Where the world backbone's training step spends its time (pretrain.world.backbone), on one GPU.

    python -m eval.bench.world_backbone --world checkpoints/world --out eval/results/world_backbone_h200.json

The stage renders each batch on the training GPU in a background thread, embeds it with the frozen
world-CLIP and takes one step of the joint objective. This times each part alone after a warm-up
(samples/s; CUDA events for GPU work, wall clock where Python drives it):

  render_gpu        WorldData.make: a batch rendered on the GPU (what the stage does today)
  render_cpu        the same renders drawn by P CPU processes at once (a DataLoader's workers would)
  condition         world-CLIP image and text features of a batch
  step_eager        joint loss, backward, AdamW, EMA on a fixed batch, the UViT eager
  step_compiled     the same with the UViT under torch.compile
  stage             the stage's own train_step (rendering in its thread included): the rate training gets
  stage_render_workers_compiled
                    the same with P CPU processes rendering ahead and the compiled step (--render-workers,
                    --compile): the rate that training would get with both
  stage_render_workers_compiled_reuseR
                    the same training R steps on each rendered batch (--batch-reuse R)

`--tiny` runs every part for a step or two on the CPU with the tiny backbone (a wiring check).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eval.bench.common import max_reserved_gb, report, seconds_per_call, sync


def _render_worker(args: tuple[int, int, int]) -> float:
    """One CPU process: render `batches` batches of `batch` on the CPU; returns its wall seconds."""
    from data_prep.faceworld.render import FaceWorld

    seed, batch, batches = args
    world = FaceWorld(seed, 64, "cpu", chunk=batch)
    rng = np.random.default_rng(seed)
    world.render(rng.integers(0, 10**6, 8), rng.integers(0, 2**31, 8))  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        world.render(rng.integers(0, 10**6, batch), rng.integers(0, 2**31, batch))
    return time.perf_counter() - t0


def render_cpu(processes: int, batch: int, batches: int) -> dict:
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(processes) as pool:
        seconds = pool.map(_render_worker, [(k, batch, batches) for k in range(processes)])
    wall = time.perf_counter() - t0
    per_process = batch * batches / float(np.mean(seconds))
    return {"processes": processes, "samples_per_s": round(per_process * processes, 1),
            "samples_per_s_per_process": round(per_process, 1), "wall_s_with_start": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="checkpoints/world", help="world folder (its world_clip/ and models/)")
    p.add_argument("--reps", type=int, default=20, help="timed steps per part")
    p.add_argument("--processes", default="4,8,14", help="CPU render process counts to try")
    p.add_argument("--render-workers", type=int, default=14,
                   help="also time the stage with this many CPU render processes (and the compiled step on CUDA); "
                        "0: not")
    p.add_argument("--batch-reuse", type=int, default=2, metavar="R",
                   help="also time the stage with render workers training R steps on each batch; 1: not")
    p.add_argument("--patch-size", type=int, default=None, metavar="P",
                   help="time a new backbone of this patch side instead of continuing the world's (the stage's "
                        "--patch-size)")
    p.add_argument("--tiny", action="store_true", help="tiny backbone on the CPU, a step each (wiring check)")
    p.add_argument("--out", help="JSON result path")
    a = p.parse_args(argv)

    from data_prep.faceworld.render import use_folder_version
    from pretrain.world.backbone import BackboneStage
    from pretrain.world.common import StageOptions, WorldData

    use_folder_version(a.world)  # the render workers draw what the world's backbone was trained on
    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    warmup, reps = (1, 1) if a.tiny else (5, a.reps)
    result: dict = {"format": "world-backbone-bench", "version": 1, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="world_bench_") as tmp:
        world = Path(tmp) / "world"
        shutil.copytree(Path(a.world) / "world_clip", world / "world_clip")
        init = Path(a.world) / "models" / "uvit_v1.safetensors"
        opts = StageOptions(out=Path(tmp) / "runs", world=world, device=device, tiny=a.tiny,
                            init_from=None if a.tiny or a.patch_size else init, patch_size=a.patch_size)
        stage = BackboneStage(opts)
        b = stage.batch_size
        result.update(batch=b, uvit=dataclasses.asdict(stage.uvit_config),
                      parameters=sum(q.numel() for q in stage.uvit.parameters()))
        parts = result["parts"]

        k = iter(range(10**6))
        s = seconds_per_call(lambda: stage.data.make(next(k)), device, reps, warmup)
        parts["render_gpu" if device.type == "cuda" else "render_same_device"] = {"samples_per_s": round(b / s, 1)}
        print(parts, flush=True)

        batch = stage.data.make(0)
        s = seconds_per_call(lambda: stage.condition(batch.pixels, batch.captions), device, reps, warmup)
        parts["condition"] = {"samples_per_s": round(b / s, 1)}
        clip0, text0 = stage.condition(batch.pixels, batch.captions)
        gen = torch.Generator(device).manual_seed(0)

        def step(model):
            return lambda: stage.optimize_on(batch.pixels, clip0, text0, gen, model)

        s = seconds_per_call(step(stage.uvit), device, reps, warmup)
        parts["step_eager"] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2)}
        print(parts, flush=True)
        if device.type == "cuda":
            t0 = time.perf_counter()
            compiled = torch.compile(stage.uvit)
            step(compiled)()
            sync(device)
            compile_s = time.perf_counter() - t0
            s = seconds_per_call(step(compiled), device, reps, warmup)
            parts["step_compiled"] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2),
                                      "compile_s": round(compile_s, 1)}
            print(parts, flush=True)

        s = seconds_per_call(lambda: stage.train_step(next(k), gen), device, reps, warmup)
        parts["stage"] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2)}
        print(parts, flush=True)
        workers = 1 if a.tiny else a.render_workers
        if workers:  # the stage as `--render-workers P` (and `--compile` on CUDA) trains
            stage.data.close()
            stage.data = WorldData(0, stage.name, b, device, size=stage.clip.config.image_size,
                                   render_workers=workers)
            name = "stage_render_workers"
            if device.type == "cuda":
                stage.step_model, name = compiled, name + "_compiled"
            s = seconds_per_call(lambda: stage.train_step(next(k), gen), device, reps, warmup + workers)
            parts[name] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2), "render_workers": workers}
            print(parts, flush=True)
            if a.batch_reuse > 1:
                r = a.batch_reuse
                stage.c = dataclasses.replace(stage.c, batch_reuse=r)
                s = seconds_per_call(lambda: stage.train_step(next(k), gen), device, r * reps, r * warmup)
                parts[f"{name}_reuse{r}"] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2),
                                             "render_workers": workers, "batch_reuse": r}
                print(parts, flush=True)
        result["peak_reserved_gb"] = max_reserved_gb(device)
        stage.data.close()

    counts = [1] if a.tiny else [int(x) for x in a.processes.split(",") if x]
    parts["render_cpu"] = [render_cpu(n, 8 if a.tiny else b, 1 if a.tiny else 3) for n in counts]
    result["cpu_count"] = mp.cpu_count()
    weights = "random" if a.tiny else f"{Path(a.world) / 'models' / 'uvit_v1.safetensors'} (timing only)"
    return report(result, a.out, tiny=a.tiny, weights=weights)


if __name__ == "__main__":
    raise SystemExit(main())
