"""Pretraining throughput on the GPU: samples/s, model FLOP utilisation, peak memory; prints JSON.

Times the training loop's own optimizer step (pretrain.train.benchmark) through the full-size frozen
UViT (random weights unless --weights is given; speed does not depend on their values). MFU counts the
useful work of a step through a frozen backbone as two UViT forwards per sample (forward + gradient
to the inputs): 2 x 2.329 = 4.66 TFLOP (reference/anchors.md), against the dense bf16 rate of this
GPU measured in the same process (--gemm-peak; a large bf16 GEMM).

One row per process (clean peak memory):
    python -m eval.bench.pretraining                          # the config's step, synthetic batches
    python -m eval.bench.pretraining --data shards --shards S --steps 200   # with the loader
    python -m eval.bench.pretraining --data none --shards S   # the loader alone (no model)
    python -m eval.bench.pretraining --form unoptimised --batch_size 16     # fp16 autocast, eager, no fusion
    python -m eval.bench.pretraining --check-losses           # both forms' losses and gradients on one batch
    python -m eval.bench.pretraining --check-block --batch_size 4   # one block, eager vs compiled, vs float32
The standard set, each row in its own process, with full-size synthetic shards made first:
    python -m eval.bench.pretraining --all --shards /tmp/shards --out eval/results/pretrain_h200.json
--levers runs the exploratory set (each lever on and off, batch sizes) instead.

Forms: "config" is the step as the config file sets it (pretrain/configs/v1.json: bf16 frozen
weights, the two-stream identity form, compiled blocks; options override it, e.g. --compile_blocks
false, and --attention picks the kernel). "unoptimised" is this project's step in its plainest form, the way the
public reference code trains: float32 weights under fp16 autocast (no loss scaling: timing only), the
two-stream identity form, no compilation, and PyTorch's own choice of attention kernel. (Results
written before this naming call the config form "optimised".)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from eval.bench.common import environment, finish, run_rows
from models.device import prefer_expandable_segments, require_gpu
from models.errors import run_cli
from pretrain.config import PretrainConfig, apply_overrides

TFLOP_PER_SAMPLE = 2 * 2.329  # forward + input gradient through the frozen UViT at 512x512
FORMS = ("config", "unoptimised")


def unoptimised(config: PretrainConfig) -> PretrainConfig:
    """The config in the unoptimised form (float32 weights, two streams, eager); attention is set apart
    (models.attention.TRAINING_KERNEL) and autocast by the caller."""
    return dataclasses.replace(config, backbone_dtype="float32", fused_identity=False, compile_blocks=False)


def gemm_peak(device, n: int = 8192, repeats: int = 20) -> float:
    """Dense bf16 matrix rate of this GPU in TFLOP/s: the best of `repeats` n x n x n GEMMs."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * n**3 / best / 1e12


def check_losses(config: PretrainConfig, device, seed: int = 0) -> dict:
    """One batch through three forms of the step with the same weights, noise and dropout: float32 (the
    truth: float32 weights, no autocast, two streams), unoptimised (fp16 autocast) and the config's
    (compiled when it says so: gradients to check before trusting compiled blocks).
    The identity module's gates are set to 0.1 (an untrained module's are 0, which would leave its
    tokens out of the loss) and its up-projections, if any, to small random values. Reports each
    form's loss terms and the relative L2 error of its loss and identity gradients against float32."""
    import torch

    from encoder.objective import TERMS
    from models import attention
    from models.noise_schedule import NoiseScheduleVP
    from pretrain.losses import diffusion_loss
    from pretrain.model import backbone_config, build_identity, latent_scale
    from pretrain.train import build, synthetic_batch

    uvit_config = backbone_config(config)
    batch = synthetic_batch(uvit_config, config.batch_size, device, seed=seed)
    identity0 = build_identity(config, uvit_config)
    with torch.no_grad():
        identity0.gate.fill_(0.1)
        if config.kv_rank:
            identity0.kv_up.normal_(0, 0.02)
    schedule, scale = NoiseScheduleVP.stable_diffusion(), latent_scale(config)
    forms = {"float32": (unoptimised(config), None, "sdpa"),
             "unoptimised": (unoptimised(config), torch.float16, "sdpa"),
             "config": (config, torch.bfloat16 if config.mixed_precision == "bf16" else None,
                        attention.TRAINING_KERNEL)}
    out = {}
    for name, (cfg, dtype, kernel) in forms.items():
        attention.TRAINING_KERNEL = kernel
        uvit, identity, net, *_ = build(cfg, device)  # as training builds it
        identity.load_state_dict(identity0.state_dict())
        for _ in range(2 if cfg.compile_blocks else 1):  # compiled: the second call is what training runs
            identity.zero_grad(set_to_none=True)
            generator = torch.Generator(device).manual_seed(seed)
            with torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False):
                loss, terms = diffusion_loss(net, batch, schedule, cfg.loss, generator, scale)
            loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in identity.parameters() if p.grad is not None])
        out[name] = {"terms": {k: float(terms[k]) for k in TERMS}, "grads": grads}
        del net, uvit, identity
        torch.cuda.empty_cache()
    truth = out["float32"]
    res = {}
    for name, r in out.items():
        res[name] = {**r["terms"],
                     "loss_rel_err": abs(r["terms"]["loss"] - truth["terms"]["loss"]) / abs(truth["terms"]["loss"]),
                     "grad_rel_l2": float((r["grads"] - truth["grads"]).norm() / truth["grads"].norm())}
    res["config_vs_unoptimised"] = {
        "loss_rel_diff": abs(out["config"]["terms"]["loss"] - out["unoptimised"]["terms"]["loss"])
        / abs(out["unoptimised"]["terms"]["loss"]),
        "grad_rel_l2": float((out["config"]["grads"] - out["unoptimised"]["grads"]).norm()
                             / out["unoptimised"]["grads"].norm())}
    return {"workload": "check_losses", "batch_size": config.batch_size, "forms": res}


BLOCK_VARIANTS = (("eager", "sdpa", "all"), ("eager", "sdpa", "identity"), ("inductor", "sdpa", "all"),
                  ("inductor", "sdpa", "identity"), ("aot_eager", "sdpa", "all"), ("inductor", "flash", "all"),
                  ("inductor", "cudnn", "all"))


def check_block(config: PretrainConfig, device, seed: int = 0) -> dict:
    """The identity model's per-block function alone (what `compile_blocks` compiles), in both identity
    forms, against a float32 eager truth: one full-size out-block (long skip included) in bf16 under
    autocast, random inputs, a fixed random projection of both streams' outputs as the loss. Each
    variant is (compiler backend, attention kernel, inputs needing a gradient): "eager" runs uncompiled,
    "aot_eager" traces the forward and backward as training's compilation does but runs them without
    Inductor's generated code, "inductor" is what training compiles; "identity" leaves only the identity
    stream's inputs and the gate needing a gradient (the first block of a step), "all" every input.
    Reports the relative L2 error of the outputs and of every input's gradient, so that a compiled
    gradient fault can be placed in Inductor's code, in the attention kernel or in the block."""
    import torch

    from encoder.id_uvit import IDConditionedUViT
    from models import attention
    from models.uvit import Block
    from pretrain.model import backbone_config

    c = backbone_config(config)
    b, k, d, h = config.batch_size, config.num_tokens, c.embed_dim, c.num_heads
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block32 = Block(d, h, c.mlp_ratio, c.qkv_bias, skip=True).to(device).requires_grad_(False)
    block16 = Block(d, h, c.mlp_ratio, c.qkv_bias, skip=True).to(device, torch.bfloat16).requires_grad_(False)
    block16.load_state_dict(block32.state_dict())
    shapes = {"x": (b, c.seq_len, d), "xi": (b, k, d), "skip": (b, c.seq_len, d), "skip_i": (b, k, d)}
    values = {n: torch.randn(s, generator=gen).to(device) for n, s in shapes.items()}
    values["gate"] = (0.1 + 0.05 * torch.randn(h, generator=gen)).to(device)
    weights = {"x": torch.randn(shapes["x"], generator=gen).to(device),
               "xi": torch.randn(shapes["xi"], generator=gen).to(device)}
    scale = torch.ones(b, device=device)

    def two_stream(fn, blk, t):
        return fn(blk, t["x"], t["xi"], t["gate"], scale.to(t["x"].dtype), t["skip"], t["skip_i"])

    def fused(fn, blk, t):
        n = t["x"].shape[1]
        g = t["gate"][None, :, None, None] * scale.to(t["x"].dtype)[:, None, None, None]
        out = fn(blk, torch.cat([t["x"], t["xi"]], 1), n, g, torch.cat([t["skip"], t["skip_i"]], 1))
        return out[:, :n], out[:, n:]

    def run(form, fn, blk, dtype, grads: str, repeats: int = 1):
        for _ in range(repeats):  # compiled: the second call is the one training repeats
            t = {n: v.to(dtype, copy=True).requires_grad_(grads == "all" or n in ("xi", "skip_i", "gate"))
                 for n, v in values.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                o, oi = form(fn, blk, t)
                loss = (o.float() * weights["x"]).sum() + (oi.float() * weights["xi"]).sum()
            loss.backward()
        return {"out": o.detach().float(), "out_id": oi.detach().float(),
                **{f"grad_{n}": v.grad.float() for n, v in t.items() if v.grad is not None}}

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    forms = {"two_stream": (two_stream, IDConditionedUViT._block),
             "fused": (fused, IDConditionedUViT._fused_block)}
    res = {}
    for form_name, (form, fn) in forms.items():
        attention.TRAINING_KERNEL = "sdpa"
        truth = run(form, fn, block32, torch.float32, "all")
        for backend, kernel, grads in BLOCK_VARIANTS:
            torch._dynamo.reset()
            attention.TRAINING_KERNEL = kernel
            f = fn if backend == "eager" else torch.compile(fn, backend=backend, dynamic=False)
            got = run(form, f, block16, torch.bfloat16, grads, repeats=1 if backend == "eager" else 2)
            name = f"{form_name} {backend} {kernel} grads={grads}"
            res[name] = {n: rel(v, truth[n]) for n, v in got.items()}
            print(name, json.dumps(res[name]), file=sys.stderr, flush=True)
    attention.TRAINING_KERNEL = "sdpa"
    return {"workload": "check_block", "batch_size": b, "seq_len": c.seq_len, "identity_tokens": k,
            "variants": res}


KERNEL_KINDS = (("attention", ("flash", "fmha", "attention", "cudnn")), ("gemm", ("gemm", "xmma", "cutlass", "nvjet",
                                                                          "wgmma")),
                ("fused elementwise (compiled)", ("triton",)), ("optimizer and EMA", ("foreach", "adam")))


def profile(config: PretrainConfig, device, steps: int = 4) -> dict:
    """GPU kernel time of `steps` optimizer steps (after a warm-up, compilation included), by kind of
    kernel (attention, GEMM, compiled elementwise, optimizer, other) and the ten largest kernels."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from pretrain.train import benchmark

    benchmark(config, steps=1, warmup=2)  # compiles outside the profiler; the profiled net reuses the code
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        res = benchmark(config, steps=steps, warmup=1)
    kernels = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            kernels[e.key] = kernels.get(e.key, 0.0) + e.self_device_time_total / 1000 / (steps + 1)  # ms a step
    kinds: dict[str, float] = {}
    for name, ms in kernels.items():
        low = name.lower()
        kind = next((k for k, marks in KERNEL_KINDS if any(m in low for m in marks)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:10]
    return {"workload": "profile", "batch_size": config.batch_size, "step_s": res["step_s"],
            "kernel_ms_per_step": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "kernel_ms_total": round(sum(kinds.values()), 2),
            "top_kernels_ms": [[name[:120], round(ms, 2)] for name, ms in top],
            "note": "kernel times averaged over one warm-up and the timed steps, compiled beforehand; step_s is "
                    "the timed steps' wall time under the profiler"}


def measure(args, config: PretrainConfig) -> dict:
    import torch

    from models import attention
    from models.uvit import UViTConfig
    from pretrain.model import backbone_config
    from pretrain.train import benchmark

    device = torch.device("cuda")
    if args.gemm_peak:
        return {"workload": "gemm_peak", "bf16_tflops": gemm_peak(device)}
    attention.TRAINING_KERNEL = args.attention if args.form == "config" else "sdpa"
    if args.check_losses:
        return check_losses(config, device)
    if args.check_block:
        return check_block(config, device)
    if args.profile:
        return profile(config, device)
    autocast = None
    if args.form == "unoptimised":
        config, autocast = unoptimised(config), "float16"
    res = {"workload": "pretrain_step" if args.data != "none" else "loader", "form": args.form,
           "attention": attention.TRAINING_KERNEL,
           **benchmark(config, steps=args.steps, warmup=args.warmup, data=args.data, autocast=autocast)}
    if args.data != "none" and backbone_config(config) == UViTConfig.v1():  # the FLOP count is the v1 model's
        res["tflops_per_gpu"] = res["samples_per_s"] * TFLOP_PER_SAMPLE / res["processes"]
    return res


def standard_rows(shards: str, steps: int) -> list[list[str]]:
    """--all: the measured peak, the unoptimised form (batch 16, the anchor's batch), the config's step
    on synthetic batches (also at batch 16, and eager), from shards through the loader (`steps` steps),
    the loader alone, the losses and gradients (also eager), the kernel profile."""
    return [["--gemm-peak"],
            ["--form", "unoptimised", "--batch_size", "16"],
            [],
            ["--batch_size", "16"],
            ["--compile_blocks", "false"],
            ["--data", "shards", "--shards", shards, "--steps", str(steps), "--warmup", "10"],
            ["--data", "none", "--shards", shards, "--steps", str(steps), "--warmup", "10"],
            ["--check-losses", "--batch_size", "4"],
            ["--check-losses", "--batch_size", "4", "--compile_blocks", "false"],
            ["--profile"]]


def lever_rows(shards: str | None) -> list[list[str]]:
    """--levers: each lever from the eager bf16 step up (identity form, attention kernel, compiled
    blocks), then the batch size and activation checkpointing with compiled blocks; with shards, the
    loader alone and the step fed by it. (eval/results/pretrain_levers_h200.json ran an earlier form of
    this set, with fused identity tokens and compiled blocks as the defaults, each row naming what it
    turned off; the fused form no longer compiles: pretrain.config refuses it.)"""
    eager, fused = ["--compile_blocks", "false"], ["--compile_blocks", "false", "--fused_identity", "true"]
    rows = [["--gemm-peak"],
            ["--form", "unoptimised", "--batch_size", "16"],
            [*eager, "--batch_size", "16"],
            [*fused, "--batch_size", "16"],
            [*fused, "--attention", "cudnn", "--batch_size", "16"],
            ["--attention", "cudnn", "--batch_size", "16"],
            ["--batch_size", "16"],
            ["--batch_size", "32"]]
    if shards:
        rows += [["--data", "none", "--shards", shards, "--batch_size", "32", "--steps", "50"],
                 ["--data", "shards", "--shards", shards, "--batch_size", "32", "--steps", "40"]]
    return rows + [["--batch_size", "48"], ["--batch_size", "64"], ["--batch_size", "32", "--activation_checkpointing"]]


def make_shards(folder: str, samples: int) -> None:
    """Full-size synthetic shards (data_prep.synthetic) unless the folder holds some already."""
    if any(Path(folder).glob("*.tar")):
        return
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--out", folder, "--samples", str(samples),
                    "--shard-size", "128", "--identities", "64"], check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="pretrain/configs/v1.json")
    p.add_argument("--form", choices=FORMS, default="config")
    p.add_argument("--attention", choices=["sdpa", "cudnn", "flash"], default="sdpa",
                   help="config form: PyTorch SDPA's choice of attention kernel (default), cuDNN's or "
                        "FlashAttention-2's (models.attention.TRAINING_KERNEL)")
    p.add_argument("--data", choices=["synthetic", "shards", "none"], default="synthetic",
                   help="synthetic batches on the GPU (the step alone), shards through the loader, or the "
                        "loader alone (none)")
    p.add_argument("--steps", type=int, default=20,
                   help="timed steps (--all: of the rows fed by shards, the others time 20; --levers: every row's)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (--levers: every row's)")
    p.add_argument("--gemm-peak", action="store_true", help="measure the dense bf16 rate only")
    p.add_argument("--check-losses", action="store_true", help="compare the forms' losses and gradients")
    p.add_argument("--check-block", action="store_true",
                   help="one block's outputs and gradients, eager and compiled (backends, kernels), against float32")
    p.add_argument("--profile", action="store_true", help="kernel time of a few steps, by kind of kernel")
    p.add_argument("--all", action="store_true", help="the standard set, each row in its own process")
    p.add_argument("--levers", action="store_true", help="the exploratory set of levers")
    p.add_argument("--shard-samples", type=int, default=2048, help="samples of the synthetic shards written")
    p.add_argument("--row-timeout", type=float, default=None, help="--all / --levers: seconds a row may take")
    p.add_argument("--out", default=None, help="write the JSON here (a list with --all / --levers)")
    args, overrides = p.parse_known_args(argv)
    require_gpu("python -m eval.bench.pretraining")  # it measures GPU throughput (bf16 on the CPU: a dtype error)
    if args.all or args.levers:
        shards = next((overrides[i + 1] for i, o in enumerate(overrides[:-1]) if o == "--shards"), None)
        if args.all and shards is None:
            p.error("--all needs --shards FOLDER (synthetic full-size shards are written there if missing)")
        if shards:
            make_shards(shards, args.shard_samples)
        rows = standard_rows(shards, args.steps) if args.all else lever_rows(shards)
        base = ["--config", args.config, *[o for o in overrides if o != "--shards" and o != shards]]
        if args.levers:  # a row's own --steps, later on its command line, wins
            base += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        peak = None
        results = []
        for r in run_rows("eval.bench.pretraining", [[*base, *row] for row in rows], timeout_s=args.row_timeout):
            if r.get("workload") == "gemm_peak":
                peak = r["bf16_tflops"]
            elif peak and r.get("tflops_per_gpu"):
                r["mfu"] = r["tflops_per_gpu"] / peak
            results.append(r)
        summarise(results)
        if args.out:
            finish({"rows": results, **environment("random")}, args.out)
        return 0
    prefer_expandable_segments()  # before the first CUDA allocation
    config = apply_overrides(PretrainConfig.from_file(args.config), overrides)
    if not (config.weights and not config.random_backbone):
        config = dataclasses.replace(config, random_backbone=True)
    res = measure(args, config)
    res.update(environment("real" if not config.random_backbone else "random"))
    print(json.dumps(res))
    if args.out:
        finish(res, args.out)
    return 0


def summarise(rows: list[dict]) -> None:
    """Print the rows as a table on stderr, with each step's ratio to the unoptimised form's."""
    base = next((r["samples_per_s"] for r in rows if r.get("form") == "unoptimised" and "samples_per_s" in r), None)
    for r in rows:
        if "samples_per_s" in r:
            ratio = f" {r['samples_per_s'] / base:.2f}x unoptimised" if base and r["workload"] != "loader" else ""
            mfu = f" MFU {r['mfu']:.1%}" if r.get("mfu") else ""
            print(f"{r['workload']:14s} {r['form']:11s} {r['data']:9s} b{r['batch_size']:<3d} "
                  f"compile={r['compile_blocks']!s:5s} attn={r['attention']:5s} {r['samples_per_s']:7.1f} samples/s"
                  f"{mfu}{ratio} peak {r['peak_allocated_gib'] or 0:.1f} GiB (warm-up {r['warmup_s']:.0f} s)",
                  file=sys.stderr)
        else:
            print(json.dumps(r)[:400], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_cli(main))
