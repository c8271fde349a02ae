"""The ID-conditioned UViT: wraps the frozen UniDiffuser UViT and never edits it.

extra_tokens injection, per block (the frozen block's own weights serve both streams):

    main stream x   [B, L, D]: o = attn(q, k, v) + g * attn(q, k_id, v_id)
    identity stream [B, K, D]: o_id = attn(q_id, [k; k_id], [v; v_id])

where g = gate[block] [H] x id_scale [B], and k_id, v_id are the block's keys and values of the
identity stream (plus the module's low-rank delta when its kv_rank > 0). The identity tokens thus sit
in the joint sequence (they attend to everything and everything may attend to them), but the main
stream sees them only through a zero-initialised gate: at g = 0 every main-stream operation is
exactly the plain UViT's, so the untrained module reproduces UniDiffuser bit for bit. This is
LLaMA-Adapter's zero-init gated attention applied to IP-Adapter-style identity tokens.

text_slots injection writes the identity tokens into the last K text positions, blended by
the gate, and calls the plain UViT.

`fused=True` computes the same function faster on the GPU: the identity tokens are appended to
the main sequence for every per-token operation (one GEMM chain over L + K rows instead of a
second chain over K rows, which would re-read every weight matrix), and only the attention is
split as above. The default two-stream form is the exact reference (bit-identical to the plain
UViT at gate 0); the fused form equals it to float rounding.

`compile_blocks=True` (training on CUDA) compiles the per-block function once with torch.compile
(regional compilation): the 31 blocks share its code, their weights being inputs rather than
constants, so compiling costs a block's graph (forward and backward, with and without the long skip),
not the network's. Inference compiles the whole net instead (models/execution.py). The compiled
two-stream block gives the eager values and gradients on the CPU and on an H200; the compiled fused
block does on the CPU, but on an H200 Inductor's code for its backward gets the identity stream's
gradients wrong, so pretraining's config refuses that pair (docs/performance.md, pretraining throughput).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from encoder.few_keys import gated_few_key_attention_
from encoder.identity import IdentityModule, low_rank_kv
from models.attention import attend, attend_few, attend_lse
from models.uvit import UViT


class IDConditionedUViT(nn.Module):
    """forward(img, clip_img, text, t_img, t_text, data_type, id_tokens=None, id_scale=1.0)
        -> (img_out, clip_img_out, text_out), the UViT's signature plus identity.

    id_tokens [B, K, token_dim] (or [1, K, token_dim], broadcast; or N x K per-photo tokens, see
    IdentityModule.tokens_from_photos); id_scale a float or [B]
    tensor (0 for a sample = plain UViT for that sample, so conditional and unconditional
    passes can share one batch).
    """

    def __init__(self, uvit: UViT, identity: IdentityModule, fused: bool = False,
                 checkpoint_blocks: bool = False, compile_blocks: bool = False):
        super().__init__()
        if bad := identity.config.backbone_mismatch(uvit.config):
            raise ValueError("identity module does not fit this UViT: " + "; ".join(bad))
        self.uvit = uvit
        self.identity = identity
        self.fused = fused
        self.checkpoint_blocks = checkpoint_blocks  # recompute block activations in the backward pass
        self._block_fn = self._fused_block if fused else self._block
        if compile_blocks:
            self._block_fn = torch.compile(self._block_fn, dynamic=False)

    def _run(self, fn, *args):
        """fn(*args), under activation checkpointing when enabled and gradients are being recorded."""
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    @property
    def config(self):
        return self.uvit.config

    def forward(self, img, clip_img, text, t_img, t_text, data_type, id_tokens=None, id_scale=1.0):
        if id_tokens is None:
            return self._forward_plain(img, clip_img, text, t_img, t_text, data_type)
        b = img.shape[0]
        scale = (id_scale.to(img.device, img.dtype).expand(b) if torch.is_tensor(id_scale)
                 else torch.full((b,), float(id_scale), dtype=img.dtype, device=img.device))  # no host copy
        id_tokens = id_tokens.to(img.dtype).expand(b, -1, -1)
        if self.identity.config.injection == "text_slots":
            return self._forward_plain(img, clip_img, self._fill_slots(text, id_tokens, scale),
                                       t_img, t_text, data_type)
        forward = self._forward_fused if self.fused else self._forward_extra_tokens
        return forward(img, clip_img, text, t_img, t_text, data_type, id_tokens, scale)

    def _forward_plain(self, img, clip_img, text, t_img, t_text, data_type):
        """The plain UViT (its own forward, or block by block when checkpointing)."""
        u = self.uvit
        if not (self.checkpoint_blocks and torch.is_grad_enabled()):
            return u(img, clip_img, text, t_img, t_text, data_type)
        _, _, h, w = img.shape
        x = u.run_blocks(u.embed(img, clip_img, text, t_img, t_text, data_type),
                         lambda i, blk, x, skip: self._run(blk, x, skip))
        return u.heads(u.norm(x), h, w)

    def _fill_slots(self, text, id_tokens, scale):
        """text [B, 77, text_dim]: last K rows <- (1 - g) text + g id_tokens, g = gate x scale."""
        k = id_tokens.shape[1]
        g = (self.identity.gate.to(text.dtype) * scale)[:, None, None]
        head, tail = text[:, :-k], text[:, -k:]
        return torch.cat([head, tail + g * (id_tokens - tail)], dim=1)

    def _forward_extra_tokens(self, img, clip_img, text, t_img, t_text, data_type, id_tokens, scale):
        _, _, h, w = img.shape
        u = self.uvit
        x = u.embed(img, clip_img, text, t_img, t_text, data_type)
        xi = id_tokens + self.identity.position(id_tokens.shape[1]).to(x.dtype)
        gates = self.identity.gate.to(x.dtype)  # [n_blocks, H]

        def block(i, blk, streams, skips):  # streams, skips: (main [B, L, D], identity [B, K, D])
            return self._run(self._block_fn, blk, *streams, gates[i], scale, *(skips or (None, None)), *self._kv(i))

        x, _ = u.run_blocks((x, xi), block)
        return u.heads(u.norm(x), h, w)

    def _forward_fused(self, img, clip_img, text, t_img, t_text, data_type, id_tokens, scale):
        _, _, h, w = img.shape
        u = self.uvit
        x = u.embed(img, clip_img, text, t_img, t_text, data_type)
        n_main = x.shape[1]
        x = torch.cat([x, id_tokens + self.identity.position(id_tokens.shape[1]).to(x.dtype)], dim=1)  # [B, L + K, D]
        g = rearrange(self.identity.gate.to(x.dtype), "n h -> n 1 h 1 1") * rearrange(scale, "b -> b 1 1 1")
        x = u.run_blocks(x, lambda i, blk, x, skip: self._run(self._block_fn, blk, x, n_main, g[i], skip,
                                                               *self._kv(i)))
        return u.heads(u.norm(x[:, :n_main]), h, w)

    def _kv(self, i: int) -> tuple:
        """Block i's identity key/value low-rank factors (kv_down[i] [2, D, r], kv_up[i] [2, r, D]), or
        (None, None) without them (kv_rank 0). Tensors, not a closure: a compiled block then serves
        every block."""
        if not self.identity.config.kv_rank:
            return None, None
        return self.identity.kv_down[i], self.identity.kv_up[i]

    @staticmethod
    def _kv_heads(xi, kv_down, kv_up, heads: int):
        """The identity tokens' key and value deltas, heads split: x_id [B, K, D] -> 2 x [B, H, K, d]."""
        k, v = low_rank_kv(xi, kv_down, kv_up)
        return rearrange(k, "b k (h d) -> b h k d", h=heads), rearrange(v, "b k (h d) -> b h k d", h=heads)

    @staticmethod
    def _fused_block(blk, x, n_main, g, skip=None, kv_down=None, kv_up=None):
        """x [B, L + K, D] (identity tokens last), g [B, H, 1, 1] -> [B, L + K, D].

        Main queries attend to the main keys in one kernel and to the K identity keys in a small
        fused one, then add the gated identity term. Identity queries attend jointly to all keys:
        at inference their rows ride along in the main kernel and the two partial softmaxes are
        merged exactly through their log-sum-exps, and on CUDA the few-key attention, the gated
        add and the merge are one Triton kernel (`encoder/few_keys.py`); with gradients (a fused
        kernel's log-sum-exp has none) they take one attention call of their own.
        """
        x = blk.fuse_skip(x, skip)
        q, k, v = blk.attn.heads(x)
        km, vm, ki, vi = k[:, :, :n_main], v[:, :, :n_main], k[:, :, n_main:], v[:, :, n_main:]
        if kv_down is not None:  # the identity tokens' keys and values get the module's delta
            dk, dv = IDConditionedUViT._kv_heads(x[:, n_main:], kv_down, kv_up, q.shape[1])
            ki, vi = ki + dk, vi + dv
            k, v = torch.cat([km, ki], dim=2), torch.cat([vm, vi], dim=2)
        if torch.is_grad_enabled():
            o_few, _ = attend_few(q[:, :, :n_main], ki, vi)
            o_main, o_id = attend(q[:, :, :n_main], km, vm), attend(q[:, :, n_main:], k, v)
            o = torch.cat([o_main + g * o_few, o_id], dim=2)
        else:  # in place in the attention kernel's fresh output: no concatenation pass
            o, lse = attend_lse(q, km, vm)
            gated_few_key_attention_(o, lse, q, ki, vi, g, n_main)
        x = blk.norm2(x + blk.attn.merge(o))
        return blk.norm3(x + blk.mlp(x))

    @staticmethod
    def _block(blk, x, xi, gate, scale, skip=None, skip_i=None, kv_down=None, kv_up=None):
        """One frozen block over both streams. x [B, L, D], xi [B, K, D], gate [H], scale [B]; kv_down,
        kv_up: the identity keys' and values' low-rank factors (IDConditionedUViT._kv) or None."""
        x, xi = blk.fuse_skip(x, skip), blk.fuse_skip(xi, skip_i)
        q, k, v = blk.attn.heads(x)
        qi, ki, vi = blk.attn.heads(xi)
        if kv_down is not None:
            dk, dv = IDConditionedUViT._kv_heads(xi, kv_down, kv_up, q.shape[1])
            ki, vi = ki + dk, vi + dv
        g = rearrange(gate, "h -> 1 h 1 1") * rearrange(scale, "b -> b 1 1 1")
        o = attend(q, k, v) + g * attend(q, ki, vi)
        oi = attend(qi, torch.cat([k, ki], dim=2), torch.cat([v, vi], dim=2))
        x = blk.norm2(x + blk.attn.merge(o))
        xi = blk.norm2(xi + blk.attn.merge(oi))
        return blk.norm3(x + blk.mlp(x)), blk.norm3(xi + blk.mlp(xi))

