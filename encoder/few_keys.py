"""The identity tokens' attention term at inference, as one GPU kernel.

In the fused identity forward (`IDConditionedUViT`, fused=True) every block attends over the main
keys in one attention kernel, which also returns its log-sum-exp, and then over the K identity keys
(K is a handful). That second, few-key attention and its use are, per block:

    main rows (r < n_main):  o[r] += g * softmax(q[r] k_id^T / sqrt(d)) v_id
    identity rows:           o[r]  = the exact merge of o[r] (main keys) with the same few-key
                             attention, through both log-sum-exps (attention over all keys)

`gated_few_key_attention_` does all of it in place, in one pass over q and o. Written with torch
ops it is about fifteen kernels over the [B, H, L, d] tensors a block; under torch.compile
Inductor fuses them, but on the eager path (what sample.py runs by default) they cost a large
fraction of the whole plain forward (docs/performance.md, the few-key kernel). The Triton kernel
runs on CUDA, without gradients and outside torch.compile; everywhere else the same function runs
as torch ops.
"""

from __future__ import annotations

import os

import torch

from models.attention import attend_few, merge_partial

try:  # Triton comes with PyTorch's Linux wheels; without it the torch ops run
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK_ROWS = 64  # query rows per program


def gated_few_key_attention_(o: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, g: torch.Tensor, n_main: int, kernel: bool | None = None) -> None:
    """In place on o. o, q [B, H, L, d] (o: attention over the main keys, lse [B, H, L] float32 its
    log-sum-exp), k, v [B, H, K, d] the identity keys and values, g [B, H, 1, 1] the gate times the
    identity scale; rows from n_main on are the identity tokens' queries.

    kernel: None picks the Triton kernel where it applies (CUDA or the Triton interpreter, no
    gradients, not compiling, a power-of-two head size, last dimensions contiguous); False forces
    the torch ops.
    """
    if kernel is None:
        kernel = _kernel_applies(o, q, k, v)
    if not kernel:
        o_few, lse_few = attend_few(q, k, v)
        o_id = merge_partial(o[:, :, n_main:], lse[:, :, n_main:], o_few[:, :, n_main:], lse_few[:, :, n_main:])
        o[:, :, :n_main].add_(g * o_few[:, :, :n_main])
        o[:, :, n_main:] = o_id
        return
    b, h, n, d = o.shape
    n_keys = k.shape[2]
    gate = g.expand(b, h, 1, 1)  # read in place through its strides (0 where broadcast)
    grid = (triton.cdiv(n, BLOCK_ROWS), b * h)
    _few_keys_kernel[grid](
        o, lse, q, k, v, gate, n, n_main, h,
        *o.stride()[:3], *lse.stride(), *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *gate.stride()[:2],
        d ** -0.5, N_KEYS=n_keys, HEAD_DIM=d, BLOCK=BLOCK_ROWS)


def _kernel_applies(o, q, k, v) -> bool:
    if triton is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if not (o.is_cuda or _interpreting()):
        return False
    d = o.shape[-1]
    return d & (d - 1) == 0 and all(t.stride(-1) == 1 for t in (o, q, k, v))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _few_keys_kernel(o_ptr, lse_ptr, q_ptr, k_ptr, v_ptr, g_ptr, n_rows, n_main, n_heads,
                         so_b, so_h, so_l, sl_b, sl_h, sl_l, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
                         sv_b, sv_h, sv_l, sg_b, sg_h, scale,
                         N_KEYS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
        """One program: BLOCK query rows of one (batch, head); the few keys one at a time with an
        online softmax in fp32, then the gated add (main rows) or the log-sum-exp merge (identity
        rows), written back over o."""
        bh = tl.program_id(1)
        b = bh // n_heads
        hd = bh % n_heads
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, HEAD_DIM)
        in_range = rows < n_rows
        q = tl.load(q_ptr + b * sq_b + hd * sq_h + rows[:, None] * sq_l + cols[None, :],
                    mask=in_range[:, None], other=0.0).to(tl.float32)
        m = tl.full((BLOCK,), float("-inf"), tl.float32)
        denom = tl.zeros((BLOCK,), tl.float32)
        acc = tl.zeros((BLOCK, HEAD_DIM), tl.float32)
        for j in tl.static_range(N_KEYS):
            kj = tl.load(k_ptr + b * sk_b + hd * sk_h + j * sk_l + cols).to(tl.float32)
            vj = tl.load(v_ptr + b * sv_b + hd * sv_h + j * sv_l + cols).to(tl.float32)
            s = tl.sum(q * kj[None, :], axis=1) * scale
            m_new = tl.maximum(m, s)
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            denom = denom * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * vj[None, :]
            m = m_new
        o_few = acc / denom[:, None]
        lse_few = m + tl.log(denom)
        o_ptrs = o_ptr + b * so_b + hd * so_h + rows[:, None] * so_l + cols[None, :]
        o = tl.load(o_ptrs, mask=in_range[:, None], other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + b * sl_b + hd * sl_h + rows * sl_l, mask=in_range, other=0.0)
        gate = tl.load(g_ptr + b * sg_b + hd * sg_h).to(tl.float32)
        w_main = tl.sigmoid(lse - lse_few)[:, None]
        out = tl.where((rows < n_main)[:, None], o + gate * o_few, w_main * o + (1.0 - w_main) * o_few)
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=in_range[:, None])
