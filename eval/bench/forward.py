"""One UViT forward on the GPU, in variants of the identity injection; prints JSON.

A diagnostic for the sampling work (docs/performance.md): where the identity tokens' overhead
comes from and what the VAE decode costs in memory. Full-size v1 modules, random weights, bf16,
torch.compile(mode="default"), batch 4 (2 images x 2 guidance passes), CUDA events after warm-up.

Variants: plain UViT; identity fused (the fast path); identity two-stream (the reference path);
identity fused with contiguous q/k/v slices; a FlexAttention form (one kernel: the identity keys of
the main queries get a log-gate score bias; a different gating, timed for comparison only).

    python -m eval.bench.forward --out eval/results/forward_h100.json
"""

from __future__ import annotations

import argparse
import sys

import torch
from einops import rearrange

from eval.bench.common import Timer, report, seconds_per_call
from eval.bench.sample import random_identity, random_pipeline
from models.attention import attend
from models.device import pick_device
from models.errors import run_cli

TFLOP_PER_SAMPLE = 2.329


def _fused_contiguous_block(blk, x, n_main, g, skip=None):
    x = blk.fuse_skip(x, skip)
    q, k, v = blk.attn.heads(x)
    qm, km, vm = (t[:, :, :n_main].contiguous() for t in (q, k, v))
    qi, ki, vi = (t[:, :, n_main:].contiguous() for t in (q, k, v))
    o_main = attend(qm, km, vm) + g * attend(qm, ki, vi)
    o_id = attend(qi, k.contiguous(), v.contiguous())
    x = blk.norm2(x + blk.attn.merge(torch.cat([o_main, o_id], dim=2)))
    return blk.norm3(x + blk.mlp(x))


def _flex_block(blk, x, n_main, log_g, skip=None):
    from torch.nn.attention.flex_attention import flex_attention

    x = blk.fuse_skip(x, skip)
    q, k, v = blk.attn.heads(x)

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where((q_idx < n_main) & (kv_idx >= n_main), score + log_g[b, h], score)

    o = flex_attention(q, k, v, score_mod=score_mod)
    x = blk.norm2(x + blk.attn.merge(o))
    return blk.norm3(x + blk.mlp(x))


def _variant_forward(net, block_fn, gate_fn):
    """An IDConditionedUViT-like forward with another block function (same structure)."""
    u = net.uvit

    def forward(img, clip_img, text, t_img, t_text, data_type, id_tokens, id_scale):
        _, _, h, w = img.shape
        x = u.embed(img, clip_img, text, t_img, t_text, data_type)
        n = x.shape[1]
        x = torch.cat([x, id_tokens + net.identity.pos.to(x.dtype)], dim=1)
        g = gate_fn(net.identity.gate.to(torch.float32), id_scale.float())  # per block
        x = u.run_blocks(x, lambda i, blk, x, skip: block_fn(blk, x, n, g[i], skip))
        return u.heads(u.norm(x[:, :n]), h, w)

    return forward


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--variants", default="plain,fused,two_stream,fused_contiguous,flex")
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", default="default", help="torch.compile mode or 'none'")
    p.add_argument("--tiny", action="store_true", help="tiny modules: a smoke test of the script")
    args = p.parse_args(argv)
    device = pick_device(args.device)  # a GPU benchmark: no GPU is one line, before any work
    pipe = random_pipeline(device, torch.bfloat16, tiny=args.tiny)
    module, tokens = random_identity(pipe)
    from encoder.id_uvit import IDConditionedUViT

    c = pipe.uvit.config
    b = args.batch
    inputs = (torch.randn(b, c.in_chans, c.img_size, c.img_size, device=device, dtype=torch.bfloat16),
              torch.randn(b, 1, c.clip_img_dim, device=device, dtype=torch.bfloat16),
              torch.randn(b, c.num_text_tokens, c.text_dim, device=device, dtype=torch.bfloat16),
              torch.full((b,), 500.0, device=device), torch.zeros(b, device=device),
              torch.ones(b, dtype=torch.long, device=device))
    tok = tokens.expand(b, -1, -1).to(torch.bfloat16)
    scale = torch.tensor([1.0, 0.0] * (b // 2), device=device, dtype=torch.bfloat16)
    fused = IDConditionedUViT(pipe.uvit, module, fused=True)
    two = IDConditionedUViT(pipe.uvit, module, fused=False)
    gate_mul = lambda gate, s: (rearrange(gate, "n h -> n 1 h 1 1") * rearrange(s, "b -> b 1 1 1")).to(torch.bfloat16)  # noqa: E731
    gate_log = lambda gate, s: torch.log(rearrange(gate.abs(), "n h -> n 1 h") * rearrange(s, "b -> 1 b 1"))  # noqa: E731
    variants = {
        "plain": (pipe.uvit, inputs),
        "fused": (lambda *a: fused(*a[:6], id_tokens=a[6], id_scale=a[7]), (*inputs, tok, scale)),
        "two_stream": (lambda *a: two(*a[:6], id_tokens=a[6], id_scale=a[7]), (*inputs, tok, scale)),
        "fused_contiguous": (_variant_forward(fused, _fused_contiguous_block, gate_mul), (*inputs, tok, scale)),
        "flex": (_variant_forward(fused, _flex_block, gate_log), (*inputs, tok, scale)),
    }
    mode = None if args.compile == "none" else args.compile
    res = {"workload": "uvit_forward", "batch": b, "compile_mode": mode, "variants": {}}
    for name in args.variants.split(","):
        fn, a = variants[name]
        try:
            compiled = torch.compile(fn, mode=mode, dynamic=False) if mode else fn
            s = seconds_per_call(compiled, device, args.iters, args=a)
            res["variants"][name] = {"ms": s * 1e3, "tflops": TFLOP_PER_SAMPLE * b / s}
        except Exception as e:  # a variant that does not compile here is reported, not fatal
            res["variants"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, res["variants"][name], flush=True)
    # VAE decode peak memory, batch 2 at once vs one image at a time
    z = torch.randn(2, c.in_chans, c.img_size, c.img_size, device=device, dtype=torch.bfloat16)
    for per_image in (False, True):
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        with Timer(device) as t:
            if per_image:
                for i in range(2):
                    pipe.autoencoder.decode(z[i:i + 1])
            else:
                pipe.autoencoder.decode(z)
        res[f"vae_decode_{'per_image' if per_image else 'batch2'}"] = {
            "ms": t.seconds * 1e3, "peak_extra_gb": (torch.cuda.max_memory_allocated() - base) / 1e9 if cuda else None}
    return report(res, args.out, args.tiny)


if __name__ == "__main__":
    sys.exit(run_cli(main))
