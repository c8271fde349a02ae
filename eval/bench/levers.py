"""Which of the remaining sampling levers pay on this GPU; prints JSON (docs/performance.md).

A diagnostic for issue 6, full-size v1 modules with random weights, bf16, batch 4 (2 images x the
guidance pair), CUDA events after a warm-up:

  attention   SDPA at the UViT's shape (strided q/k/v views of the qkv output, as the model
              calls it) under each backend: flash (FlashAttention-2), cuDNN, memory-efficient.
  few_keys    the identity tokens' few-key attention term of one block: torch ops against the
              Triton kernel (encoder/few_keys.py), time and largest difference.
  mlp_gemm    fc1 + exact GELU as two kernels, against one cuBLASLt GEMM with a bias + GELU
              epilogue (tanh GELU, `torch._addmm_activation`), against the bare GEMM.
  forward     the compiled plain forward with the attention backend and the MLP form varied,
              its relative L2 error against fp32 eager, then the fused identity forward.
  profile     GPU time of the best compiled forward by kernel family (GEMM, attention, Triton
              fused elementwise, other) and its ten largest kernels.

    python -m eval.bench.levers --out eval/results/levers_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from einops import rearrange

from encoder.id_uvit import IDConditionedUViT
from eval.bench.common import report, seconds_per_call
from eval.bench.forward import TFLOP_PER_SAMPLE
from eval.bench.sample import random_identity, random_pipeline
from models.device import pick_device
from models.errors import run_cli


def _backend(name: str | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name is None:
        return nullcontext()
    return sdpa_kernel([getattr(SDPBackend, name)])


def bench_attention(device, b: int, c, iters: int) -> dict:
    """SDPA alone at the model's shape and layout, per backend."""
    h, d, n = c.num_heads, c.head_dim, c.seq_len
    qkv = torch.randn(b, n, 3 * c.embed_dim, device=device, dtype=torch.bfloat16)
    q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=h)
    flop = 4 * b * h * n * n * d
    out = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with _backend(name):
                s = seconds_per_call(F.scaled_dot_product_attention, device, iters, args=(q, k, v))
            out[name] = {"ms": s * 1e3, "tflops": flop / s / 1e12}
        except RuntimeError as e:
            out[name] = {"error": str(e)[:200]}
    return out


def bench_mlp_gemm(device, b: int, c, iters: int) -> dict:
    """fc1 + GELU at the model's shape: separate kernels vs the cuBLASLt GELU epilogue."""
    m, dim, hidden = b * c.seq_len, c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    x = torch.randn(m, dim, device=device, dtype=torch.bfloat16)
    w = torch.randn(hidden, dim, device=device, dtype=torch.bfloat16) * dim ** -0.5
    bias = torch.randn(hidden, device=device, dtype=torch.bfloat16) * 0.1
    flop = 2 * m * dim * hidden
    forms = {
        "linear_then_gelu": lambda: F.gelu(F.linear(x, w, bias)),
        "addmm_gelu_epilogue": lambda: torch._addmm_activation(bias, x, w.t(), use_gelu=True),
        "linear_only": lambda: F.linear(x, w, bias),
    }
    out = {}
    for name, fn in forms.items():
        s = seconds_per_call(fn, device, iters)
        out[name] = {"ms": s * 1e3, "tflops": flop / s / 1e12}
    exact = F.gelu(F.linear(x.float(), w.float(), bias.float()))
    for name in ("linear_then_gelu", "addmm_gelu_epilogue"):
        out[name]["rel_l2_vs_fp32_erf"] = float((forms[name]().float() - exact).norm() / exact.norm())
    return out


def bench_few_keys(device, b: int, c, iters: int, n_keys: int = 4) -> dict:
    """The identity tokens' few-key term of one block (`encoder/few_keys.py`): torch ops against
    the Triton kernel, on the model's layouts (q/k/v strided views of the qkv output, o in the
    attention kernel's [B, L, H, d] memory)."""
    from encoder.few_keys import gated_few_key_attention_

    h, d, n_main = c.num_heads, c.head_dim, c.seq_len
    qkv = torch.randn(b, n_main + n_keys, 3 * c.embed_dim, device=device, dtype=torch.bfloat16)
    q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=h)
    o = rearrange(torch.randn(b, n_main + n_keys, h, d, device=device, dtype=torch.bfloat16), "b l h d -> b h l d")
    lse = torch.randn(b, h, n_main + n_keys, device=device) + 8.0
    g = torch.randn(b, h, 1, 1, device=device, dtype=torch.bfloat16)
    out = {}
    results = {}
    for name, kernel in (("torch_ops", False), ("triton_kernel", True)):
        if kernel and not (device.type == "cuda" and _triton_available()):
            out[name] = {"error": "needs CUDA and Triton"}
            continue
        work = o.clone()

        def step(work=work, kernel=kernel):
            gated_few_key_attention_(work, lse, q, k[:, :, n_main:], v[:, :, n_main:], g, n_main, kernel=kernel)

        s = seconds_per_call(step, device, iters)
        fresh = o.clone()
        gated_few_key_attention_(fresh, lse, q, k[:, :, n_main:], v[:, :, n_main:], g, n_main, kernel=kernel)
        results[name] = fresh.float()
        out[name] = {"ms_per_block": s * 1e3, "ms_per_forward": s * 1e3 * (c.depth + 1)}
    if len(results) == 2:
        diff = (results["triton_kernel"] - results["torch_ops"]).abs().max()
        out["max_abs_diff"] = float(diff)
        out["max_abs_value"] = float(results["torch_ops"].abs().max())
    return out


def _triton_available() -> bool:
    from encoder import few_keys

    return few_keys.triton is not None


def bench_vae(pipe, device, iters: int) -> dict:
    """Decode of one 512x512 image: layouts, cuDNN autotuning, compilation."""
    c = pipe.uvit.config
    z = torch.randn(1, c.in_chans, c.img_size, c.img_size, device=device, dtype=torch.bfloat16)
    ae = pipe.autoencoder.to(torch.bfloat16)
    out = {"tflop_per_image": 2.51}
    forms = [("contiguous", torch.contiguous_format, False, None),
             ("channels_last", torch.channels_last, False, None),
             ("channels_last_cudnn_benchmark", torch.channels_last, True, None),
             ("contiguous_cudnn_benchmark", torch.contiguous_format, True, None),
             ("channels_last_compiled", torch.channels_last, False, "default")]
    for name, fmt, benchmark, m in forms:
        torch._dynamo.reset()
        torch.backends.cudnn.benchmark = benchmark
        ae.to(memory_format=fmt)
        f = torch.compile(ae.decode, mode=m, dynamic=False) if m else ae.decode
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            s = seconds_per_call(f, device, max(iters // 2, 2), args=(z.contiguous(memory_format=fmt),))
            peak = (torch.cuda.max_memory_allocated() - base) / 1e9 if device.type == "cuda" else None
            out[name] = {"ms": s * 1e3, "tflops": 2.51 / s, "peak_extra_gb": peak}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    torch.backends.cudnn.benchmark = False
    return out


def _kernel_family(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "sdpa", "attention", "cudnn")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "cutlass", "xmma", "sm90")):
        return "gemm"
    if n.startswith("triton"):
        return "triton_fused"
    return "other"


def profile_forward(fn, args, device, iters: int = 5) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn(*args)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn(*args)
        torch.cuda.synchronize(device)
    per_kernel: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[ev.name] += ev.device_time / 1e3 / iters  # ms per forward
            counts[ev.name] += 1
    families: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        families[_kernel_family(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:16]
    return {"ms_by_family": dict(families), "total_ms": sum(families.values()),
            "top_kernels": [{"name": k[:120], "ms": v, "calls": counts[k] // iters} for k, v in top]}


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--compile", default="default", help="torch.compile mode or 'none'")
    p.add_argument("--parts", default="attention,mlp_gemm,forward,profile,vae")
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny modules: a smoke test of the script")
    args = p.parse_args(argv)
    device = pick_device(args.device)  # a GPU benchmark: no GPU is one line, before any work
    parts = set(args.parts.split(","))
    b = args.batch
    torch.backends.cuda.matmul.allow_tf32 = False
    pipe = random_pipeline(device, torch.float32, tiny=args.tiny)
    c = pipe.uvit.config
    g = torch.Generator(device=device).manual_seed(0)
    inputs = (torch.randn(b, c.in_chans, c.img_size, c.img_size, generator=g, device=device),
              torch.randn(b, 1, c.clip_img_dim, generator=g, device=device),
              torch.randn(b, c.num_text_tokens, c.text_dim, generator=g, device=device),
              torch.linspace(999, 20, b, device=device), torch.zeros(b, device=device),
              torch.ones(b, dtype=torch.long, device=device))
    res: dict = {"workload": "sampling_levers", "batch": b, "compile_mode": args.compile}
    if "attention" in parts:
        res["attention"] = bench_attention(device, b, c, args.iters * 5)
        print("attention", res["attention"], flush=True)
    if "mlp_gemm" in parts:
        res["mlp_gemm"] = bench_mlp_gemm(device, b, c, args.iters * 5)
        print("mlp_gemm", res["mlp_gemm"], flush=True)
    if "few_keys" in parts:
        res["few_keys"] = bench_few_keys(device, b, c, args.iters * 5)
        print("few_keys", res["few_keys"], flush=True)
    if not parts & {"forward", "profile", "eager_profile", "vae"}:
        return report(res, args.out, args.tiny)
    ref = pipe.uvit(*inputs)  # fp32 eager, the accuracy reference
    pipe.uvit.to(torch.bfloat16)
    pipe.dtype = torch.bfloat16
    x16 = tuple(a.to(torch.bfloat16) if a.is_floating_point() and a.ndim > 1 else a for a in inputs)
    mode = None if args.compile == "none" else args.compile
    module, tokens = random_identity(pipe)
    net = IDConditionedUViT(pipe.uvit, module, fused=True)
    scale = torch.tensor([1.0, 0.0] * (b // 2), device=device, dtype=torch.bfloat16)

    def identity_forward(*a):
        return net(*a, id_tokens=tokens.expand(b, -1, -1), id_scale=scale)

    # (name, network, cuDNN attention, GELU epilogue, compile mode)
    variants = [("plain_sdpa", pipe.uvit, False, False, mode), ("plain_cudnn", pipe.uvit, True, False, mode),
                ("plain_sdpa_epilogue", pipe.uvit, False, True, mode),
                ("plain_cudnn_epilogue", pipe.uvit, True, True, mode),
                ("identity_sdpa", identity_forward, False, False, mode),
                ("identity_cudnn_epilogue", identity_forward, True, True, mode),
                ("plain_cudnn_epilogue_eager", pipe.uvit, True, True, None),
                ("identity_cudnn_epilogue_eager", identity_forward, True, True, None)]
    if mode:  # the compiler's own CUDA graphs
        variants.append(("identity_cudnn_epilogue_reduce_overhead", identity_forward, True, True, "reduce-overhead"))
    res["forward"] = {}
    compiled = {}
    for name, fn, cudnn, epilogue, m in variants if "forward" in parts else []:
        torch._dynamo.reset()
        torch.backends.cudnn.enabled = cudnn  # models.attention takes cuDNN's kernel only when enabled
        pipe.uvit.use_gelu_epilogue(epilogue)
        f = torch.compile(fn, mode=m, dynamic=False) if m else fn
        try:
            s = seconds_per_call(f, device, args.iters, args=x16)
            entry = {"ms": s * 1e3, "tflops": TFLOP_PER_SAMPLE * b / s}
            if fn is pipe.uvit:
                out = f(*x16)
                entry["max_rel_l2"] = max(float((o.float() - r).norm() / r.norm()) for o, r in zip(out, ref))
            res["forward"][name] = entry
            compiled[name] = f
        except Exception as e:  # noqa: BLE001 - a variant that fails here is reported, not fatal
            res["forward"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, res["forward"][name], flush=True)
    torch.backends.cudnn.enabled = True
    pipe.uvit.use_gelu_epilogue(True)
    if "eager_profile" in parts and device.type == "cuda":
        for name, fn, cudnn in (("plain_eager", pipe.uvit, True), ("identity_eager", identity_forward, True),
                                ("identity_eager_no_cudnn", identity_forward, False)):
            torch.backends.cudnn.enabled = cudnn
            res[f"profile_{name}"] = profile_forward(fn, x16, device)
            print("profile", name, json.dumps(res[f"profile_{name}"]), flush=True)
        torch.backends.cudnn.enabled = True
    if "profile" in parts and device.type == "cuda":
        for name in ("plain_cudnn_epilogue", "identity_cudnn_epilogue"):
            if name in compiled:
                res[f"profile_{name}"] = profile_forward(compiled[name], x16, device)
                print("profile", name, json.dumps(res[f"profile_{name}"]), flush=True)
    if "vae" in parts:
        res["vae_decode"] = bench_vae(pipe, device, args.iters)
        print("vae_decode", res["vae_decode"], flush=True)
    return report(res, args.out, args.tiny)


if __name__ == "__main__":
    sys.exit(run_cli(main))
