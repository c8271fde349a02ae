"""Where the world autoencoder's training step spends its time (pretrain.world.autoencoder), on one GPU.

    python -m eval.bench.world_autoencoder --downsample 2 --out eval/results/world_autoencoder/bench_h100.json

The stage renders each batch (on CPU processes with --render-workers), then takes one step of the
reconstruction loss: encode, sample, decode, L1 + KL, backward, AdamW, EMA. Side by side, its runs were
limited by the GPU, not by rendering. This times the step alone on one fixed batch after a warm-up (CUDA
events), in the ways it could run, beside the stage's own step as it trains:

  step_eager                 the step as the stage takes it today (bf16 autocast)
  step_channels_last         the same with the model's weights and the batch in channels-last memory
  step_compiled              the encoder and decoder under torch.compile (the stage's --compile)
  step_compiled_channels_last  both
  stage_render_workers       the stage's own train_step with P CPU render processes (--render-workers) and
                             batch reuse R (--batch-reuse): the rate a run gets (rendering included)

`--tiny` runs every part for a step on the CPU with the tiny config (a wiring check).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from eval.bench.common import max_reserved_gb, report, seconds_per_call, sync


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--downsample", type=int, choices=(2, 4, 8), default=None,
                   help="the autoencoder's downsampling (the stage's --downsample; default its config's, 4)")
    p.add_argument("--latent-channels", type=int, default=None, help="the stage's --latent-channels")
    p.add_argument("--reps", type=int, default=20, help="timed steps per part")
    p.add_argument("--render-workers", type=int, default=15, help="CPU render processes of the stage's row; 0: not")
    p.add_argument("--batch-reuse", type=int, default=4, metavar="R", help="the stage row's --batch-reuse")
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU, a step each (wiring check)")
    p.add_argument("--out", help="JSON result path")
    a = p.parse_args(argv)

    from pretrain.world.autoencoder import AutoencoderStage
    from pretrain.world.common import StageOptions, WorldData, batch_face_weights

    device = torch.device("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    warmup, reps = (1, 1) if a.tiny else (5, a.reps)
    result: dict = {"format": "world-autoencoder-bench", "version": 1, "parts": {}}
    parts = result["parts"]
    with tempfile.TemporaryDirectory(prefix="world_ae_bench_") as tmp:
        opts = StageOptions(out=Path(tmp) / "runs", world=Path(tmp) / "world", device=device, tiny=a.tiny,
                            downsample=a.downsample, latent_channels=a.latent_channels, face_weight=4.0)
        stage = AutoencoderStage(opts)
        b = stage.batch_size
        result.update(batch=b, train=dataclasses.asdict(stage.c),
                      parameters=sum(q.numel() for q in stage.model.parameters()))
        batch = stage.data.make(0)
        weight = batch_face_weights(batch, stage.c.face_weight)
        gen = torch.Generator(device).manual_seed(0)

        def timed(name: str, pixels: torch.Tensor, pixel_weight: torch.Tensor | None, **extra) -> None:
            t0 = time.perf_counter()
            stage.optimize_on(pixels, gen, pixel_weight)  # the first call (compilation when compiled)
            sync(device)
            first_s = time.perf_counter() - t0
            s = seconds_per_call(lambda: stage.optimize_on(pixels, gen, pixel_weight), device, reps, warmup)
            parts[name] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2),
                           "first_call_s": round(first_s, 1), **extra}
            print(name, parts[name], flush=True)

        def memory(fmt: torch.memory_format) -> None:  # the weights in `fmt`; AdamW's state made again to match
            stage.model.to(memory_format=fmt)
            stage.opt.state.clear()

        last = torch.channels_last
        timed("step_eager", batch.pixels, weight)
        memory(last)
        timed("step_channels_last", batch.pixels.contiguous(memory_format=last), weight)
        memory(torch.contiguous_format)
        if device.type == "cuda":
            stage.compile_model()
            timed("step_compiled", batch.pixels, weight)
            memory(last)
            timed("step_compiled_channels_last", batch.pixels.contiguous(memory_format=last), weight)
            memory(torch.contiguous_format)
        workers = 1 if a.tiny else a.render_workers
        if workers:  # the stage's own step as a run takes it (compiled on CUDA: the fastest plain-memory variant)
            stage.data.close()
            stage.data = WorldData(0, stage.name, b, device, size=stage.image_size, render_workers=workers)
            stage.c = dataclasses.replace(stage.c, batch_reuse=a.batch_reuse)
            k = iter(range(10**6))
            r = a.batch_reuse
            s = seconds_per_call(lambda: stage.train_step(next(k), gen), device, r * reps, r * (warmup + workers))
            parts["stage_render_workers"] = {"samples_per_s": round(b / s, 1), "ms": round(1000 * s, 2),
                                             "render_workers": workers, "batch_reuse": r,
                                             "compiled": device.type == "cuda"}
            print("stage_render_workers", parts["stage_render_workers"], flush=True)
        result["peak_reserved_gb"] = max_reserved_gb(device)
        stage.data.close()
    return report(result, a.out, tiny=a.tiny, weights="random (a new run's initialisation)")


if __name__ == "__main__":
    raise SystemExit(main())
