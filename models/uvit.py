"""UViT v1: UniDiffuser's joint noise predictor, checkpoint-compatible with `uvit_v1.pth`.

One network predicts the noise of three variables at once: the image latent z [B, 4, 64, 64],
the image-CLIP embedding [B, 1, 512] and the text features [B, 77, 64], each with its own
timestep. The joint sequence (length 1105 at full size) is

    [t_img, t_text, data_type, text x 77, clip_img x 1, patches x 1024]

and runs through 15 in-blocks, a mid-block and 15 out-blocks with long skips (U-ViT), all
post-LayerNorm. State-dict names and shapes are the public reference's (418 entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import attend
from .config_dict import config_from_dict

# Constructor arguments of the reference code that carry no weights and change nothing at
# inference in v1; accepted in a config dict so reference configs load unchanged.
_INERT_REFERENCE_KEYS = {"qk_scale", "pos_drop_rate", "drop_rate", "attn_drop_rate", "norm_layer",
                         "use_checkpoint"}


@dataclass(frozen=True)
class UViTConfig:
    """Keyword names follow the reference constructor (`uvit_tiny.config.json` loads as is)."""

    img_size: int = 64  # latent side length
    in_chans: int = 4
    patch_size: int = 2
    embed_dim: int = 1536
    depth: int = 30  # in-blocks = out-blocks = depth // 2, plus one mid-block
    num_heads: int = 24
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    text_dim: int = 64
    num_text_tokens: int = 77
    clip_img_dim: int = 512
    conv: bool = False  # U-ViT's final 3x3 conv over the unpatchified image output (v1 has none)

    @classmethod
    def v1(cls) -> UViTConfig:
        return cls()

    @classmethod
    def tiny(cls) -> UViTConfig:
        """Same structure, small enough for CPU tests (the golden file's config)."""
        return cls(img_size=8, embed_dim=64, depth=5, num_heads=4, text_dim=8, num_text_tokens=6,
                   clip_img_dim=16)

    @classmethod
    def from_dict(cls, d: dict) -> UViTConfig:
        """Build from reference keyword names; unknown keys are an error, inert ones are checked."""
        config = config_from_dict(cls, d, "UViT", inert=_INERT_REFERENCE_KEYS)
        for key in ("pos_drop_rate", "drop_rate", "attn_drop_rate"):
            if d.get(key, 0.0) not in (0, 0.0, None):
                raise ValueError(f"UViT config {key}={d[key]}: only 0 is supported (inference model)")
        if d.get("qk_scale") is not None:
            raise ValueError("UViT config qk_scale must be None (scale is 1/sqrt(head_dim))")
        return config

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def seq_len(self) -> int:
        """Joint sequence length: 3 special tokens + text + clip + patches (1105 for v1)."""
        return 3 + self.num_text_tokens + 1 + self.num_patches


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos first. t [B] float -> [B, dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)*(W/p), D], patches in row-major order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"latent {h}x{w} is not divisible by patch size {self.patch_size}")
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class Attention(nn.Module):
    """Multi-head self-attention; qkv output laid out as (3, heads, head_dim)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, L, D] -> q, k, v each [B, H, L, D/H]."""
        q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        return q, k, v

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """[B, H, L, D/H] -> output projection [B, L, D]."""
        return self.proj(rearrange(o, "b h l d -> b l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.merge(attend(q, k, v))


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2.

    With `gelu_epilogue` set (the GPU sampling fast path sets it), inference runs fc1's bias and
    the GELU inside the fc1 GEMM (on the GPU a cuBLASLt epilogue, which uses the tanh form of
    GELU: it differs from erf by under 5e-4 and is computed in fp32 before the one rounding).
    That saves a pass over the [B, L, 4D] activation per block. With gradients enabled the
    exact form always runs.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.gelu_epilogue = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu_epilogue and not torch.is_grad_enabled():
            h = torch._addmm_activation(self.fc1.bias, rearrange(x, "... d -> (...) d"), self.fc1.weight.t(),
                                        use_gelu=True)
            return self.fc2(h.view(*x.shape[:-1], h.shape[-1]))
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Post-LayerNorm transformer block; out-blocks first fuse the long skip.

    out-blocks: x = norm1(skip_linear(cat([x, skip])))
    all:        x = norm2(x + attn(x)); x = norm3(x + mlp(x))
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if skip else None
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim)

    def fuse_skip(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """[B, L, D], [B, L, D] -> [B, L, D]; identity for blocks without a skip."""
        if self.skip_linear is None:
            return x
        if skip is None:
            raise ValueError("an out-block needs the skip tensor of its in-block")
        return self.norm1(self.skip_linear(torch.cat([x, skip], dim=-1)))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fuse_skip(x, skip)
        x = self.norm2(x + self.attn(x))
        return self.norm3(x + self.mlp(x))


class UViT(nn.Module):
    """The v1 joint noise predictor.

    forward(img [B, C, H, W], clip_img [B, 1, clip_dim], text [B, n_text, text_dim],
            t_img [B], t_text [B], data_type [B] long)
        -> (img_out [B, C, H, W], clip_img_out [B, 1, clip_dim], text_out [B, n_text, text_dim])

    The forward is split into `embed` / `run_blocks` / `norm` / `heads` so that wrappers (the
    identity module in `encoder/`) can add tokens around it without editing it.
    """

    def __init__(self, config: UViTConfig):
        super().__init__()
        c = self.config = config
        d = c.embed_dim
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, d)
        if c.mlp_time_embed:
            self.time_img_embed = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
            self.time_text_embed = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        else:
            self.time_img_embed = nn.Identity()
            self.time_text_embed = nn.Identity()
        self.text_embed = nn.Linear(c.text_dim, d)
        self.text_out = nn.Linear(d, c.text_dim)
        self.clip_img_embed = nn.Linear(c.clip_img_dim, d)
        self.clip_img_out = nn.Linear(d, c.clip_img_dim)
        self.token_embedding = nn.Embedding(2, d)
        # pos_embed covers [t_img, t_text, text, clip, patches]; the data-type row is inserted at 2.
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + c.num_text_tokens + 1 + c.num_patches, d))
        self.pos_embed_token = nn.Parameter(torch.zeros(1, 1, d))
        block = dict(dim=d, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias)
        self.in_blocks = nn.ModuleList([Block(**block) for _ in range(c.depth // 2)])
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList([Block(**block, skip=True) for _ in range(c.depth // 2)])
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, c.patch_size**2 * c.in_chans)
        # U-ViT's optional final conv mixes each output pixel with its neighbours across patch borders
        self.final_layer = nn.Conv2d(c.in_chans, c.in_chans, 3, padding=1) if c.conv else None

    def use_gelu_epilogue(self, enabled: bool = True) -> UViT:
        """Fuse each MLP's bias + GELU into its first GEMM at GPU inference (see `Mlp`)."""
        for m in self.modules():
            if isinstance(m, Mlp):
                m.gelu_epilogue = enabled
        return self

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """[1, L, D] with the data-type row at index 2; patch rows interpolated for other sizes."""
        c = self.config
        pos = torch.cat([self.pos_embed[:, :2], self.pos_embed_token, self.pos_embed[:, 2:]], dim=1)
        if h == c.img_size and w == c.img_size:
            return pos
        g = c.img_size // c.patch_size
        other, patches = pos.split([pos.shape[1] - c.num_patches, c.num_patches], dim=1)
        patches = rearrange(patches, "1 (h w) d -> 1 d h w", h=g, w=g)
        patches = F.interpolate(patches, (h // c.patch_size, w // c.patch_size), mode="bilinear")
        return torch.cat([other, rearrange(patches, "1 d h w -> 1 (h w) d")], dim=1)

    def embed(self, img, clip_img, text, t_img, t_text, data_type) -> torch.Tensor:
        """Inputs -> joint token sequence [B, L, D] with position embeddings added."""
        _, _, h, w = img.shape
        d = self.config.embed_dim
        t_img_token = self.time_img_embed(timestep_embedding(t_img, d)).unsqueeze(1)
        t_text_token = self.time_text_embed(timestep_embedding(t_text, d)).unsqueeze(1)
        type_token = self.token_embedding(data_type).unsqueeze(1)
        x = torch.cat([t_img_token.to(img.dtype), t_text_token.to(img.dtype), type_token,
                       self.text_embed(text), self.clip_img_embed(clip_img), self.patch_embed(img)], dim=1)
        return x + self.position_embedding(h, w)

    def run_blocks(self, x, block_fn=None):
        """[B, L, D] -> [B, L, D] through in-, mid- and out-blocks with the long skips (before `norm`).

        block_fn(i, blk, x, skip) -> x replaces blk(x, skip); i numbers the blocks in order (in, mid,
        out) and skip is None for in- and mid-blocks. Wrappers use it to run the frozen blocks their
        own way; their x may be any value (e.g. a tuple of streams), and out-block i gets the value
        in-block depth - 1 - i returned.
        """
        if block_fn is None:
            block_fn = lambda i, blk, x, skip: blk(x, skip)  # noqa: E731
        n_in = len(self.in_blocks)
        skips = []
        for i, blk in enumerate([*self.in_blocks, self.mid_block, *self.out_blocks]):
            x = block_fn(i, blk, x, skips.pop() if i > n_in else None)
            if i < n_in:
                skips.append(x)
        return x

    def heads(self, x: torch.Tensor, h: int, w: int):
        """[B, L, D] -> (img [B, C, H, W], clip_img [B, 1, clip_dim], text [B, n_text, text_dim])."""
        c = self.config
        n_text, n_img = c.num_text_tokens, (h // c.patch_size) * (w // c.patch_size)
        _, text, clip_img, img = x.split([3, n_text, 1, n_img], dim=1)
        img = rearrange(self.decoder_pred(img), "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
                        h=h // c.patch_size, p1=c.patch_size, p2=c.patch_size)
        if self.final_layer is not None:
            img = self.final_layer(img)
        return img, self.clip_img_out(clip_img), self.text_out(text)

    def forward(self, img, clip_img, text, t_img, t_text, data_type):
        _, _, h, w = img.shape
        x = self.run_blocks(self.embed(img, clip_img, text, t_img, t_text, data_type))
        return self.heads(self.norm(x), h, w)
