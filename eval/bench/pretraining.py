"""Pretraining throughput on the GPU: samples/s, model FLOP utilisation, peak memory; prints JSON.

Times the training loop's own optimizer step (pretrain.train.benchmark) through the full-size
frozen UViT (random weights unless --weights is given) at a per-GPU batch, with and without
activation checkpointing. MFU counts the useful work of a step through a frozen backbone as two
UViT forwards per sample (forward + gradient to the inputs): 2 x 2.329 = 4.66 TFLOP
(reference/anchors.md), against the measured dense bf16 rate of the GPU (798 TFLOP/s on the H100).

    python -m eval.bench.pretraining --batch_size 16 --out eval/results/pretrain_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from eval.bench.common import environment, finish
from models.device import require_gpu
from models.errors import run_cli
from pretrain.config import PretrainConfig, apply_overrides

TFLOP_PER_SAMPLE = 2 * 2.329  # forward + input gradient through the frozen UViT at 512x512
PEAK_TFLOPS = {"H100": 798.0, "H200": 788.0}  # measured dense bf16 (anchors.md, device notes)


def peak_for(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="pretrain/configs/v1.json")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None)
    args, overrides = p.parse_known_args(argv)
    require_gpu("python -m eval.bench.pretraining")  # it measures GPU throughput (bf16 on the CPU: a dtype error)
    from pretrain.train import benchmark

    config = apply_overrides(PretrainConfig.from_file(args.config), overrides)
    weights = "real" if (config.weights and not config.random_backbone) else "random"
    if weights == "random":
        config = dataclasses.replace(config, random_backbone=True)
    from models.uvit import UViTConfig
    from pretrain.model import backbone_config

    res = {"workload": "pretrain", **benchmark(config, steps=args.steps, warmup=args.warmup)}
    full_size = backbone_config(config) == UViTConfig.v1()  # the FLOP count is the v1 model's
    peak = peak_for(res["device"])
    res["tflops_per_gpu"] = res["samples_per_s"] * TFLOP_PER_SAMPLE / res["processes"] if full_size else None
    res["mfu"] = res["tflops_per_gpu"] / peak if (peak and full_size) else None
    res["peak_tflops_used"] = peak
    res.update(environment(weights))
    print(__import__("json").dumps(res))
    if args.out:
        finish(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
