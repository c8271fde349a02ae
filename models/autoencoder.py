"""AutoencoderKL: Stable Diffusion's KL-f8 image autoencoder, checkpoint-compatible with `autoencoder_kl.pth`.

A 512x512 image in [-1, 1] is encoded to moments [B, 8, 64, 64] (mean and log-variance of a
diagonal Gaussian over a 4-channel latent); `sample` draws z and multiplies it by the scale factor
0.18215, the UViT's latent input. `decode` inverts the scaling and runs the decoder. State-dict
names are the original LDM code's (`encoder.down.0.block.0.conv1.weight`, ...; 248 entries for v1).

Structure (v1: ch 128, ch_mult [1, 2, 4, 4], 2 res-blocks per level, no attention except one
single-head attention block in each of the encoder's and decoder's middle):

    encoder: conv_in -> levels (blocks, downsample except last) -> mid -> norm_out, SiLU, conv_out
    decoder: conv_in -> mid -> levels last to first (blocks + 1, upsample except level 0)
             -> norm_out, SiLU, conv_out
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config_dict import config_from_dict


@dataclass(frozen=True)
class AutoencoderConfig:
    """Field names follow the reference `ddconfig` (plus `embed_dim` and `scale_factor`)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256  # only decides which levels get attention (attn_resolutions)
    double_z: bool = True
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    scale_factor: float = 0.18215

    def __post_init__(self):
        # Lists from json become tuples so that the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder outputs mean and log-variance)")
        if self.ch % 32:
            raise ValueError(f"ch={self.ch}: GroupNorm uses 32 groups, so ch must be a multiple of 32")

    @classmethod
    def v1(cls) -> AutoencoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> AutoencoderConfig:
        """Same structure, small enough for CPU tests (the golden file's config)."""
        return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        """From the reference format ({"ddconfig": {...}, "embed_dim", "scale_factor"}) or a flat dict."""
        flat = dict(d)
        if "ddconfig" in flat:
            flat.update(flat.pop("ddconfig"))
        return config_from_dict(cls, flat, "autoencoder")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place at inference: at 512x512 each activation is 64-128 MB, and the decoder's
    memory peak is in its last level (the same values either way)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """[B, C_in, H, W] -> [B, C_out, H, W]: two (GroupNorm, SiLU, conv3x3) plus the (1x1-projected) input."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x)))
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return h.add_(x) if not torch.is_grad_enabled() else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, 1x1-conv q/k/v/proj_out. [B, C, H, W] -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = self.norm(x)
        q, k, v = (rearrange(f(y), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(rearrange(o, "b 1 (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    """[B, C, H, W] -> [B, C, H/2, W/2]: pad right and bottom by 1, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """[B, C, H, W] -> [B, C, 2H, 2W]: nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` (res-blocks), `attn` (after each block, where enabled) and an
    optional `downsample` / `upsample` (named as the reference so the keys match)."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, attn: bool, dropout: float):
        super().__init__()
        chans = [in_channels] + [out_channels] * n_blocks
        pairs = zip(chans[:-1], chans[1:], strict=True)
        self.block = nn.ModuleList([ResnetBlock(a, b, dropout) for a, b in pairs])
        self.attn = nn.ModuleList([AttnBlock(out_channels) for _ in range(n_blocks)] if attn else [])

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Mid(nn.Module):
    """block_1 -> attn_1 -> block_2 at constant width."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, 2 * z_channels, H / f, W / f] with f = 2 ** (levels - 1)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        widths = [c.ch * m for m in c.ch_mult]
        self.down = nn.ModuleList()
        res, block_in = c.resolution, c.ch
        for i, block_out in enumerate(widths):
            level = Level(block_in, block_out, c.num_res_blocks, res in c.attn_resolutions, c.dropout)
            if i != len(widths) - 1:
                level.downsample = Downsample(block_out)
                res //= 2
            self.down.append(level)
            block_in = block_out
        self.mid = Mid(block_in, c.dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_ch, h * f, w * f]. `up[i]` is level i; levels run last to first."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        block_in = widths[-1]
        res = c.resolution // c.downsample_factor
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in, c.dropout)
        levels = []
        for i in reversed(range(len(widths))):
            level = Level(block_in, widths[i], c.num_res_blocks + 1, res in c.attn_resolutions, c.dropout)
            if i != 0:
                level.upsample = Upsample(widths[i])
                res *= 2
            levels.insert(0, level)
            block_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_silu(self.norm_out(h)))


def latent_from_moments(moments: torch.Tensor, scale_factor: float = 0.18215,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """VAE moments [B, 2 * E, h, w] (mean, log-variance) -> scaled latent sample [B, E, h, w].

    eps is drawn on the generator's own device (a CPU generator works for CUDA moments too).
    """
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    gen_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype).to(mean.device)
    return scale_factor * (mean + std * eps)


class AutoencoderKL(nn.Module):
    """Image <-> scaled latent.

    encode_moments(x [B, 3, H, W] in [-1, 1]) -> moments [B, 2 * embed_dim, H/8, W/8]
    sample(moments) -> z [B, embed_dim, H/8, W/8], scaled by scale_factor
    encode(x) = sample(encode_moments(x)); latent(x) = scale_factor * the mean, without the sample's noise
    decode(z) -> x [B, 3, H, W], raw (about [-1, 1]; callers map 0.5 * (x + 1) and clamp to [0, 1])
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 2 * embed_dim, H / f, W / f] (mean, then log-variance, along channels)."""
        f = self.config.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image {tuple(x.shape[-2:])} is not divisible by the downsampling factor {f}")
        return self.quant_conv(self.encoder(x))

    def sample(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 2 * E, h, w] -> z [B, E, h, w] = scale_factor * (mean + exp(0.5 * clamp(logvar)) * eps)."""
        return latent_from_moments(moments, self.config.scale_factor, generator)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> scaled latent sample [B, E, H / f, W / f]."""
        return self.sample(self.encode_moments(x), generator)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> scale_factor x the posterior mean [B, E, H / f, W / f]: encode without
        its sampling noise (as PixelSpace.latent), what a backbone is trained on and a reconstruction decodes."""
        return self.config.scale_factor * self.encode_moments(x).chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, E, h, w] -> image [B, 3, h * f, w * f], not clamped."""
        return self.decoder(self.post_quant_conv(z / self.config.scale_factor))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction: decode(encode(x))."""
        return self.decode(self.encode(x, generator))


def latent_scale_factor(config: AutoencoderConfig | dict | None = None) -> float:
    """The scale factor between an image space's moments and the UViT's latents (`sample`, `latent`) of a
    model_configs.json "autoencoder" entry (AutoencoderKL or pixel space; None: v1's). Whatever samples
    latents from stored moments (training objectives) takes it from here, so that it trains in the space
    the backbone samples in."""
    from .pixel_space import PixelSpaceConfig, is_pixel_space_config
    from .weights import as_config

    return as_config(config, PixelSpaceConfig if is_pixel_space_config(config) else AutoencoderConfig).scale_factor


def load_autoencoder(path: str | os.PathLike | None = None,
                     config: AutoencoderConfig | dict | None = None, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Frozen AutoencoderKL (eval, no grad) from `autoencoder_kl.pth` or a .safetensors file.

    path None: looked up in the weights folder (models.paths). config None: v1; a dict in the
    reference format or flat; or an AutoencoderConfig. Keys of an LDM training checkpoint's loss
    (`loss.*`) are ignored. A pixel-space config ({"kind": "pixel_space", ...}: the identity world)
    gives models.pixel_space.PixelSpace, the same interface without a network.
    """
    from .paths import find_weights
    from .pixel_space import is_pixel_space_config, load_pixel_space
    from .weights import as_config, load_frozen

    if is_pixel_space_config(config):
        return load_pixel_space(find_weights("autoencoder") if path is None else path, config, device=device,
                                dtype=dtype)

    config = as_config(config, AutoencoderConfig)
    path = find_weights("autoencoder") if path is None else path
    return load_frozen(lambda: AutoencoderKL(config), path, "AutoencoderKL (autoencoder_kl.pth)",
                       device=device, dtype=dtype, ignore=(r"^loss\.",))
