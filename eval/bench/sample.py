"""Sampling benchmarks on the GPU; prints one JSON object per run (and writes it with --out).

Workloads (competition.md, anchors.md):
  sample_bench   prompt "an elephant under the sea", 30 images, 2 per batch, 30 steps, guidance 7;
                 timed from the start of sampling (text encoding included) to decoded images.
  sample_prompt  one prompt, 3 images in one batch (what sample.py does per prompt).
Paths:
  reference      fp32 weights under fp16 autocast, conditional and unconditional passes as two
                 calls, eager: the public reference code's configuration, in this project's code.
  fast           bf16 weights and activations, both passes in one batch, fused identity tokens,
                 cuDNN attention, the GELU in the fc1 GEMM, CUDA-graph replay, optionally
                 torch.compile (--compile, default "default"; "none" for eager).
The CUDA allocator uses expandable segments, as sample.py asks for (--allocator default: PyTorch's
default allocator); the JSON's cuda_alloc_conf says which.
With --identity the identity tokens are on (an identity module with open gates).
Without real weights (--weights not given) every module is full-size with random weights; speed
and memory do not depend on the values, and the JSON says "weights": "random".

    python -m eval.bench.sample --workload sample_bench --path fast --identity --out eval/results/x.json
    python -m eval.bench.sample --check-accuracy     # fast forward vs fp32, relative L2 error
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from encoder.config import IdentityConfig
from encoder.identity import IdentityModule
from eval.bench.common import Timer, finish, max_reserved_gb, random_text_encoder, report, run_rows, sync
from models.autoencoder import AutoencoderConfig, AutoencoderKL
from models.device import pick_device, prefer_expandable_segments
from models.errors import run_cli
from models.execution import Execution
from models.pipeline import UniDiffuserT2I
from models.uvit import UViT, UViTConfig
from personalize.generate import identity_net

PROMPT = "an elephant under the sea"
WORKLOADS = {"sample_bench": dict(n_images=30, batch=2), "sample_prompt": dict(n_images=3, batch=3)}


def random_pipeline(device: torch.device, dtype: torch.dtype, seed: int = 0, tiny: bool = False) -> UniDiffuserT2I:
    """Full-size v1 modules with random weights (no files needed); tiny ones for smoke tests."""
    torch.manual_seed(seed)
    uvit_cfg = UViTConfig(img_size=8, embed_dim=64, depth=5, num_heads=4) if tiny else UViTConfig.v1()
    ae_cfg = AutoencoderConfig.tiny() if tiny else AutoencoderConfig.v1()
    with torch.device(device):
        uvit = UViT(uvit_cfg).to(dtype).eval().requires_grad_(False)
        autoencoder = AutoencoderKL(ae_cfg).to(dtype).eval().requires_grad_(False)
    text_encoder = random_text_encoder(device, dtype, tiny=tiny)
    return UniDiffuserT2I(uvit, autoencoder, text_encoder, device=device, dtype=dtype)


def random_identity(pipe: UniDiffuserT2I, num_tokens: int = 4) -> tuple[IdentityModule, torch.Tensor]:
    """An identity module with open gates and its tokens for a random face embedding."""
    module = IdentityModule(IdentityConfig.for_uvit(pipe.uvit.config, num_tokens=num_tokens))
    with torch.no_grad():
        module.gate.fill_(0.05)
    module = module.to(pipe.device, pipe.dtype).eval().requires_grad_(False)
    face = torch.nn.functional.normalize(torch.randn(2, 512, device=pipe.device), dim=-1)
    with torch.no_grad():
        tokens = module.tokens_from_photos(face.to(pipe.dtype), face.to(pipe.dtype))
    return module, tokens


@torch.no_grad()
def run_batches(pipe, net, tokens, n_images: int, batch: int, steps: int, cfg: float, gen) -> None:
    """The timed work: per batch, encode the prompt, sample, decode."""
    from encoder.guidance import identity_guided_eps_fn

    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        text = pipe.encode_text([PROMPT]).expand(b, -1, -1)
        eps_fn = identity_guided_eps_fn(net, text, tokens, z_shape=pipe.z_shape, clip_dim=pipe.clip_dim,
                                        scale=cfg, generator=gen, batch_passes=pipe.execution.fast)
        z, _ = pipe.sample_latents(eps_fn, b, steps=steps, generator=gen)
        pipe.decode(z)


def bench(workload: str, path: str, identity: bool, steps: int, cfg: float, compile_mode: str | None,
          repeats: int, device: torch.device, tiny: bool = False, cuda_graphs: bool = True) -> dict:
    fast = path == "fast"
    pipe = random_pipeline(device, torch.bfloat16 if fast else torch.float32, tiny=tiny)
    if fast:
        pipe.execution = Execution.fast_path(device, torch.bfloat16, compile_mode, cuda_graphs=cuda_graphs)
    else:  # fp32 weights, fp16 autocast
        pipe.execution = Execution.reference(device)
    if identity:
        module, tokens = random_identity(pipe)
        net = identity_net(pipe, module)
    else:
        net, tokens = pipe.execution.net(pipe.uvit), None
    if device.type == "cuda":
        # random init built fp32 tensors before the cast; real loading (load_uvit) assigns the file's
        # tensors cast on the fly and never holds them, so that peak is not part of sampling
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    w = WORKLOADS[workload]
    gen = torch.Generator(device=device).manual_seed(42)
    t0 = time.perf_counter()
    run_batches(pipe, net, tokens, w["batch"], w["batch"], steps, cfg, gen)  # warm-up (and compile)
    sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        with Timer(device) as timer:
            run_batches(pipe, net, tokens, w["n_images"], w["batch"], steps, cfg, gen)
        times.append(timer.seconds)
    best = min(times)
    out = {"workload": workload, "path": path, "identity": identity, "n_images": w["n_images"],
           "batch": w["batch"], "steps": steps, "cfg": cfg, "compile_mode": compile_mode if fast else None,
           "cuda_graphs": bool(fast and pipe.execution.cuda_graphs),
           "seconds": best, "seconds_all": times, "s_per_image": best / w["n_images"],
           "max_reserved_gb": max_reserved_gb(device), "warmup_s": warmup_s}
    if workload == "sample_prompt":
        out["s_per_prompt"] = best
    return out


def accuracy_inputs(c: UViTConfig, device: torch.device, generator: torch.Generator, b: int = 4) -> tuple:
    """The accuracy check's UViT inputs (fp32): four timestep pairs from noisy to nearly clean."""
    g = generator
    return (torch.randn(b, c.in_chans, c.img_size, c.img_size, generator=g, device=device),
            torch.randn(b, 1, c.clip_img_dim, generator=g, device=device),
            torch.randn(b, c.num_text_tokens, c.text_dim, generator=g, device=device),
            torch.tensor([999.0, 500.0, 100.0, 20.0], device=device)[:b],
            torch.tensor([0.0, 1000.0, 0.0, 1000.0], device=device)[:b],
            torch.ones(b, dtype=torch.long, device=device))


@torch.no_grad()
def check_accuracy(compile_mode: str | None, device: torch.device, tiny: bool = False) -> dict:
    """One forward of the fast configuration against fp32 on the same random inputs (batch 4)."""
    pipe = random_pipeline(device, torch.float32, tiny=tiny)
    module, _ = random_identity(pipe)
    c = pipe.uvit.config
    g = torch.Generator(device=device).manual_seed(0)
    args = accuracy_inputs(c, device, g)
    face = torch.nn.functional.normalize(torch.randn(1, 512, generator=g, device=device), dim=-1)
    tokens = module.tokens(face)
    scale = torch.tensor([1.0, 0.0, 1.0, 0.0], device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = identity_net(pipe, module)(*args, id_tokens=tokens, id_scale=scale)  # fp32, two-stream, eager
    pipe.uvit.to(torch.bfloat16)
    module.to(torch.bfloat16)
    pipe.dtype = torch.bfloat16
    pipe.execution = Execution.fast_path(device, torch.bfloat16, compile_mode)
    fast = identity_net(pipe, module)(*args, id_tokens=tokens.bfloat16(), id_scale=scale)
    names = ("img", "clip_img", "text")
    err = {n: float((f.float() - r).norm() / r.norm()) for n, f, r in zip(names, fast, ref)}
    return {"workload": "accuracy",
            "compare": f"fast (bf16, fused, {'compiled' if compile_mode else 'eager'}) vs fp32 eager two-stream",
            "rel_l2": err, "max_rel_l2": max(err.values()), "bound": 1e-2, "compile_mode": compile_mode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="sample_bench")
    p.add_argument("--path", choices=["reference", "fast"], default="fast")
    p.add_argument("--identity", action="store_true", help="identity tokens on")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--compile", default="default", help="torch.compile mode or 'none' (default: default)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="fast path without CUDA-graph replay")
    p.add_argument("--allocator", choices=["expandable", "default"], default="expandable",
                   help="CUDA allocator: expandable segments, as sample.py asks for (default), or PyTorch's "
                        "default; a PYTORCH_CUDA_ALLOC_CONF you set yourself wins either way")
    p.add_argument("--with-reference", action="store_true", help="--all: the reference-path rows too")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions; the best is reported")
    p.add_argument("--check-accuracy", action="store_true")
    p.add_argument("--all", action="store_true", help="run the standard set, each in its own process")
    p.add_argument("--out", default=None, help="write the JSON here (a list with --all)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only for smoke tests")
    p.add_argument("--tiny", action="store_true", help="tiny modules: a smoke test of the script, not a benchmark")
    args = p.parse_args(argv)
    device = pick_device(args.device)  # a GPU benchmark: no GPU is one line, before any work
    compile_mode = None if args.compile == "none" else args.compile
    if args.all:
        runs = [["--check-accuracy"], ["--check-accuracy", "--compile", "none"],
                ["--workload", "sample_bench", "--path", "fast"],
                ["--workload", "sample_bench", "--path", "fast", "--identity"],
                ["--workload", "sample_bench", "--path", "fast", "--identity", "--compile", "none"],
                ["--workload", "sample_bench", "--path", "fast", "--identity", "--compile", "none",
                 "--no-cuda-graphs"],
                ["--workload", "sample_bench", "--path", "fast", "--identity", "--compile", "none",
                 "--allocator", "default"],
                ["--workload", "sample_prompt", "--path", "fast", "--identity"],
                ["--workload", "sample_prompt", "--path", "fast", "--identity", "--compile", "none"]]
        if args.with_reference:
            runs[1:1] = [["--workload", "sample_bench", "--path", "reference"],
                         ["--workload", "sample_prompt", "--path", "reference"]]
        arg_lists = []
        for extra in runs:
            extra = extra if "--compile" in extra else [*extra, "--compile", args.compile]
            cmd = ["--repeats", str(args.repeats), "--device", args.device, *extra]
            cmd += ["--tiny"] if args.tiny else []
            cmd += [] if "--allocator" in extra else ["--allocator", args.allocator]
            arg_lists.append(cmd)
        results = run_rows("eval.bench.sample", arg_lists)
        if args.out:
            finish(results, args.out)
        return 0
    if args.allocator == "expandable":
        prefer_expandable_segments()  # before the first CUDA allocation
    res = check_accuracy(compile_mode, device, args.tiny) if args.check_accuracy else bench(
        args.workload, args.path, args.identity, args.steps, args.cfg, compile_mode, args.repeats, device,
        args.tiny, cuda_graphs=not args.no_cuda_graphs)
    return report(res, args.out, args.tiny)


if __name__ == "__main__":
    sys.exit(run_cli(main))
