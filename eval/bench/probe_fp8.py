"""Can FP8 matrix maths buy sampling speed inside issue 6's accuracy bound? Prints JSON.

Issue 6 bounds the fast path's error: one UViT forward against fp32 on the same random inputs,
relative L2 under 1e-2. The bf16 fast path already uses 0.0078 of it. The only matrix maths
faster than bf16 on an H100 is FP8, so this probe measures both sides of that trade:

  error   full-size UViT (random weights, batch 4, the accuracy check's timesteps) in fp32, with
          the inputs of chosen block GEMMs rounded as the kernel would see them: bf16, or FP8 e4m3
          with one scale per row of the activation and per output channel of the weight (the
          finest scaling `torch._scaled_mm` offers), or one scale per tensor. Products and sums
          stay fp32, as in the kernels, so each figure is the rounding's own error. Runs on the
          CPU (about a minute a forward on 2 cores) or on a GPU (TF32 off).
  speed   CUDA only: every block GEMM shape of the batch-4 forward, bf16 `F.linear` against FP8
          `torch._scaled_mm` with row-wise scales (weights quantized once, the activation's
          quantization timed as its own kernel), summed over the 31 blocks.

    python -m eval.bench.probe_fp8 --parts error --device cpu --out eval/results/fp8_error_cpu.json
    python -m eval.bench.probe_fp8 --parts speed,error --device cuda --out eval/results/fp8_h100.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from eval.bench.common import report, seconds_per_call
from eval.bench.sample import accuracy_inputs
from models.device import pick_device
from models.errors import UserError, run_cli
from models.uvit import UViT, UViTConfig

FP8_MAX = 448.0  # largest finite float8_e4m3fn
GEMMS = ("qkv", "proj", "fc1", "fc2", "skip_linear")  # the block GEMMs, by module name suffix


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def round_fp8_rowwise(x: torch.Tensor) -> torch.Tensor:
    """[..., K] -> same values after e4m3 rounding with one scale per row (last dim reduced)."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale


def round_fp8_tensorwise(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax().clamp_min(1e-12) / FP8_MAX
    return (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale


ROUNDINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bf16": round_bf16, "fp8_rowwise": round_fp8_rowwise, "fp8_tensorwise": round_fp8_tensorwise}


@contextmanager
def rounded_gemms(net: nn.Module, plan: dict[str, str]):
    """Within the context, each block Linear whose name ends with a key of `plan` rounds its input
    and weight with ROUNDINGS[plan[key]] and then multiplies in the module's dtype."""
    patched = []
    for name, m in net.named_modules():
        suffix = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Linear) and "block" in name and suffix in plan:  # in-, mid-, out-blocks
            rnd = ROUNDINGS[plan[suffix]]
            w = rnd(m.weight.detach())

            def forward(x, m=m, w=w, rnd=rnd):
                return F.linear(rnd(x), w, m.bias)

            m.forward = forward
            patched.append(m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward  # back to the class's forward


def default_plans() -> list[dict[str, str]]:
    every = dict.fromkeys(GEMMS, "fp8_rowwise")
    return [dict.fromkeys(GEMMS, "bf16"), every, {"fc1": "fp8_rowwise", "fc2": "fp8_rowwise"},
            {"fc1": "fp8_rowwise"}, {"fc2": "fp8_rowwise"},
            {"qkv": "fp8_rowwise", "proj": "fp8_rowwise", "skip_linear": "fp8_rowwise"},
            dict.fromkeys(GEMMS, "fp8_tensorwise")]


@torch.no_grad()
def probe_error(device: torch.device, tiny: bool = False, plans: Iterable[dict[str, str]] | None = None,
                batch: int = 4) -> list[dict]:
    """Relative L2 error of each output, per rounding plan, against the unrounded fp32 forward."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    c = UViTConfig.tiny() if tiny else UViTConfig.v1()
    with torch.device(device):
        net = UViT(c).eval()
    args = accuracy_inputs(c, device, torch.Generator(device=device).manual_seed(0), batch)
    ref = net(*args)
    rows = []
    for plan in default_plans() if plans is None else plans:
        t0 = time.perf_counter()
        with rounded_gemms(net, plan) as n_patched:
            out = net(*args)
        err = {k: float((o - r).norm() / r.norm()) for k, o, r in zip(("img", "clip_img", "text"), out, ref)}
        rows.append({"plan": plan, "gemms_rounded": n_patched, "rel_l2": err, "max_rel_l2": max(err.values()),
                     "within_bound": max(err.values()) < 1e-2, "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows


def block_gemm_shapes(c: UViTConfig, b: int) -> list[tuple[str, int, int, int, int]]:
    """(name, M, K, N, count per forward) of every block GEMM of one forward at batch b."""
    d, hidden, m = c.embed_dim, int(c.embed_dim * c.mlp_ratio), b * c.seq_len
    n_blocks, n_out = c.depth + 1, c.depth // 2
    return [("qkv", m, d, 3 * d, n_blocks), ("proj", m, d, d, n_blocks), ("fc1", m, d, hidden, n_blocks),
            ("fc2", m, hidden, d, n_blocks), ("skip_linear", m, 2 * d, d, n_out)]


def _quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] bf16 -> (e4m3 [M, K], fp32 scales [M, 1])."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
    return (x / scale).to(torch.float8_e4m3fn), scale


def _fp8_linear(x8, w8, sx, sw, bias) -> torch.Tensor:
    """F.linear's result from e4m3 operands: bias in the epilogue, bf16 out."""
    return torch._scaled_mm(x8, w8.t(), sx, sw.t(), bias=bias, out_dtype=torch.bfloat16)


def _speed_needs_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise UserError("--parts speed needs a CUDA device (FP8 GEMMs run on sm89 and newer)",
                        hint="run it on a GPU machine with --device cuda, or ask for --parts error only")


@torch.no_grad()
def probe_speed(device: torch.device, b: int = 4, iters: int = 50) -> dict:
    """bf16 against FP8 row-wise GEMMs at the forward's shapes; ms per forward, summed."""
    _speed_needs_cuda(device)
    c = UViTConfig.v1()
    quantize = torch.compile(_quantize_rowwise, dynamic=False)
    rows, totals = [], {"bf16_ms": 0.0, "fp8_gemm_ms": 0.0, "fp8_quantize_ms": 0.0}
    for name, m, k, n, count in block_gemm_shapes(c, b):
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) * k ** -0.5
        bias = torch.zeros(n, device=device, dtype=torch.bfloat16)
        w8, sw = _quantize_rowwise(w)
        x8, sx = quantize(x)
        flop = 2 * m * k * n
        t_bf16 = seconds_per_call(F.linear, device, iters, args=(x, w, bias))
        t_fp8 = seconds_per_call(_fp8_linear, device, iters, args=(x8, w8, sx, sw, bias))
        t_q = seconds_per_call(quantize, device, iters, args=(x,))
        rows.append({"gemm": name, "m": m, "k": k, "n": n, "per_forward": count,
                     "bf16_ms": t_bf16 * 1e3, "bf16_tflops": flop / t_bf16 / 1e12,
                     "fp8_ms": t_fp8 * 1e3, "fp8_tflops": flop / t_fp8 / 1e12, "quantize_ms": t_q * 1e3})
        totals["bf16_ms"] += count * t_bf16 * 1e3
        totals["fp8_gemm_ms"] += count * t_fp8 * 1e3
        totals["fp8_quantize_ms"] += count * t_q * 1e3
        print(rows[-1], flush=True)
    totals["fp8_saving_ms_per_forward"] = totals["bf16_ms"] - totals["fp8_gemm_ms"] - totals["fp8_quantize_ms"]
    return {"batch": b, "gemms": rows, "per_forward": totals}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="error", help="comma-separated: error, speed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=50, help="timed iterations per GEMM (speed)")
    p.add_argument("--out", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny modules: a smoke test of the script")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if unknown := parts - {"error", "speed"}:
        p.error(f"unknown part(s) {sorted(unknown)}; choose from error, speed")
    device = pick_device(args.device)  # before any work: a missing GPU is one line
    if "speed" in parts:
        _speed_needs_cuda(device)  # before the error part's minutes of work
    res: dict = {"workload": "fp8_probe", "bound": 1e-2}
    if "error" in parts:
        res["error"] = probe_error(device, args.tiny, batch=args.batch)
    if "speed" in parts:
        res["speed"] = probe_speed(device, args.batch, args.iters)
    return report(res, args.out, args.tiny)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
