"""Unmasked scaled dot-product attention, with the fastest kernel this GPU has for inference.

    attend(q, k, v)     -> softmax(q k^T / sqrt(d)) v
    attend_lse(q, k, v) -> (the same, logsumexp of the scaled scores per query)

q [B, H, Lq, d], k and v [B, H, Lk, d]; outputs [B, H, Lq, d] and lse [B, H, Lq] float32.

Kernel choice (the function is the same in every case, only the rounding differs):
- Inference in half precision on a Hopper-or-newer GPU (no input needs a gradient): cuDNN's fused
  attention. At the UViT's shape (1105 tokens, head dim 64, strided q/k/v views) it is faster than
  PyTorch's default choice, FlashAttention-2 (docs/performance.md, the cuDNN attention lever).
- Everything else (fp32, older GPUs, the CPU) and, by default, training: PyTorch's SDPA, which picks
  cuDNN, flash, memory-efficient or the exact math path itself.
- `TRAINING_KERNEL` picks training's kernel explicitly (half precision on CUDA, an input needing a
  gradient): "cudnn" or "flash" (FlashAttention-2) instead of "sdpa". cuDNN's was no faster than
  SDPA's choice in pretraining (docs/performance.md, the pretraining levers); both exist to measure
  kernels and to check compiled training's gradients kernel by kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CUDNN_MAX_HEAD_DIM = 128
TRAINING_KERNELS = ("sdpa", "cudnn", "flash")
TRAINING_KERNEL = "sdpa"  # attention with gradients on CUDA in half precision: one of TRAINING_KERNELS


def _needs_grad(*xs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _half_cuda(q: torch.Tensor, min_major: int) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0
            and torch.cuda.get_device_properties(q.device).major >= min_major)


def _use_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (_half_cuda(q, 9) and q.shape[-1] <= _CUDNN_MAX_HEAD_DIM and torch.backends.cudnn.enabled
            and (TRAINING_KERNEL == "cudnn" or not _needs_grad(q, k, v)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v. q [B, H, Lq, d], k/v [B, H, Lk, d] -> [B, H, Lq, d]."""
    if _use_cudnn(q, k, v):  # the backward needs the log-sum-exp: computed only then
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, _needs_grad(q, k, v))[0]
    if TRAINING_KERNEL == "flash" and _needs_grad(q, k, v) and _half_cuda(q, 8) and q.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    return F.scaled_dot_product_attention(q, k, v)


def attend_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(s) v, logsumexp(s)) with s = q k^T / sqrt(d): [B, H, Lq, d], [B, H, Lq] float32.

    The log-sum-exp lets a caller merge attention over disjoint key sets exactly (see
    `merge_partial`).
    """
    if _use_cudnn(q, k, v):
        o, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
        return o, lse.reshape(q.shape[:-1]).float()
    if _half_cuda(q, 8) and q.shape[-1] <= 256:  # FlashAttention-2's range
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        return o, lse.float()
    s = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, dim=-1)
    return (torch.exp(s - lse[..., None]).to(v.dtype) @ v), lse


def attend_few(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend_lse` over a handful of keys (K <= 16, e.g. identity tokens), written so that the
    compiler fuses it into the surrounding elementwise work instead of launching matrix kernels
    with N = K. q [B, H, L, d], k/v [B, H, K, d] -> ([B, H, L, d], lse [B, H, L] float32)."""
    if torch.compiler.is_compiling():
        s = (q[..., None, :].float() * k[:, :, None].float()).sum(-1)  # [B, H, L, K]
    else:
        s = (q @ k.transpose(-1, -2)).float()
    s = s * q.shape[-1] ** -0.5
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    if torch.compiler.is_compiling():
        o = (p[..., None] * v[:, :, None].float()).sum(-2)
    else:
        o = p.to(v.dtype) @ v
    return o.to(v.dtype), lse


def merge_partial(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from the attention over each:
    (e^lse1 o1 + e^lse2 o2) / (e^lse1 + e^lse2). o [B, H, L, d], lse [B, H, L] -> [B, H, L, d]."""
    w1 = torch.sigmoid(lse1 - lse2)[..., None]
    return (w1 * o1.float() + (1 - w1) * o2.float()).to(o1.dtype)
