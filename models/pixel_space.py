"""Pixel space: the identity world's "autoencoder", with AutoencoderKL's interface and no network.

The latent is the image itself times a gain g, [B, 3, 64, 64] with x in [-1, 1], so the pipeline,
the shards' `moments`, pretrain's losses and personalize's refinement run on it unchanged:

    encode_moments(x) = cat([G x / s, LOGVAR])      moments [B, 6, H, W]: mean and log-variance
    sample(moments)   = s * (mean + exp(LOGVAR / 2) * eps) = G x   (up to 1e-7: exp(-15) * s)
    decode(z)         = G^-1 z

where s = config.scale_factor and g = config.signal_scale. s only says how the moments store the
latent. It is 0.18215 by default, AutoencoderKL v1's, because pretrain/losses.py draws shard
latents as 0.18215 * (mean + std * eps): moments of g x / 0.18215 give back z = g x there too.

g (default 1) shifts the noise schedule towards noise: UniDiffuser's schedule was made for latents,
and on 64x64 pixels its noisiest timestep still shows the image's large colour areas (a model reads
an image's mean colour off it, and then reads it off the pure noise that sampling starts from,
instead of taking it from the prompt). A gain g < 1 multiplies every timestep's signal-to-noise
ratio by g^2 without touching the schedule, the sampler or the objective. With G = g (one gain) the
latent is g x.

One gain lowers the fine scales' signal with the coarse ones', and a render's small details (glasses
frames, a hat's brim, an eye) then stand clear of the noise only at the few least noisy timesteps.
`level_gains` gives each scale its own gain instead (G = g sum_l g_l P_l): P_1 .. P_L are the orthogonal
projections onto the Haar detail bands of 2, 4, .. 2^L px blocks and the last band takes everything
coarser, its block means included:

    A_k x = the mean of each 2^k x 2^k block, spread back over the block (A_0 x = x)
    P_l x = A_{l-1} x - A_l x  (l < L),   P_L x = A_{L-1} x         level_gains = (g_1, .., g_L), finest first

The bands are orthogonal and sum to x, so G^-1 = g^-1 sum_l P_l / g_l, and a sample's leftover noise is
amplified by 1 / (g g_l) per band, no more. The latent keeps the image's layout (a UViT patchifies it
unchanged); only its spectrum is reshaped.

The module holds its scale factor as its one frozen tensor (`scale`), so that it has a weights file
(`pixel_space.safetensors`, found where autoencoder_kl.pth would be), a dtype and a fingerprint like
every other part. A weights folder selects it in model_configs.json:
{"autoencoder": {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.18215}}.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import latent_from_moments
from .config_dict import config_from_dict

KIND = "pixel_space"
LOGVAR = -30.0  # the smallest log-variance latent_from_moments keeps (it clamps at -30)


@dataclass(frozen=True)
class PixelSpaceConfig:
    """embed_dim: image channels (= the UViT's in_chans); scale_factor, signal_scale, level_gains (empty:
    one gain for every scale): see the module docstring."""

    kind: str = KIND
    embed_dim: int = 3
    scale_factor: float = 0.18215
    signal_scale: float = 1.0
    level_gains: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"pixel space config kind must be {KIND!r}, not {self.kind!r}")
        object.__setattr__(self, "level_gains", tuple(float(g) for g in self.level_gains))  # JSON gives a list
        if self.scale_factor <= 0 or self.signal_scale <= 0 or any(g <= 0 for g in self.level_gains):
            raise ValueError(f"scale_factor, signal_scale and level_gains must be positive, not "
                             f"{self.scale_factor}, {self.signal_scale}, {list(self.level_gains)}")

    @property
    def gains(self) -> tuple[float, ...]:
        """G's gain per Haar band, finest first (signal_scale times each level gain; one entry: one gain
        for every scale)."""
        return tuple(self.signal_scale * g for g in self.level_gains) or (self.signal_scale,)

    @property
    def block(self) -> int:
        """Image sides must be a multiple of this (the coarsest band's block side; 1 with one gain)."""
        return 2 ** max(len(self.level_gains) - 1, 0)

    @property
    def downsample_factor(self) -> int:
        return 1

    @classmethod
    def from_dict(cls, d: dict) -> PixelSpaceConfig:
        return config_from_dict(cls, d, "pixel space")


def haar_bands(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    """[P_1 x, .., P_count x] of x [B, C, H, W], finest first (module docstring): the orthogonal Haar bands,
    the last one everything coarser; they sum to x. H and W must be multiples of 2^(count - 1)."""
    bands, finer = [], x
    for level in range(1, count):
        k = 2 ** level
        coarser = F.avg_pool2d(x, k).repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
        bands.append(finer - coarser)
        finer = coarser
    return [*bands, finer]


def band_gains(x: torch.Tensor, gains: tuple[float, ...]) -> torch.Tensor:
    """sum_l gains[l] P_l x (haar_bands); calling it again with the reciprocal gains inverts it."""
    return sum(g * band for g, band in zip(gains, haar_bands(x, len(gains))))


def is_pixel_space_config(config) -> bool:
    """Whether an "autoencoder" entry of model_configs.json (or a config object) selects pixel space."""
    return isinstance(config, PixelSpaceConfig) or (isinstance(config, dict) and config.get("kind") == KIND)


class PixelSpace(nn.Module):
    """Image <-> latent, a fixed linear map (AutoencoderKL's methods; see the module docstring).

    encode_moments(x [B, C, H, W] in [-1, 1]) -> moments [B, 2C, H, W]
    sample(moments) -> z [B, C, H, W];  encode(x) = sample(encode_moments(x)) = latent(x) = G x
    decode(z [B, C, H, W]) -> x [B, C, H, W] (= G^-1 z)
    """

    def __init__(self, config: PixelSpaceConfig | None = None):
        super().__init__()
        self.config = config or PixelSpaceConfig()
        self.scale = nn.Parameter(torch.tensor([self.config.scale_factor]), requires_grad=False)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """G x, the latent without encode's 1e-7 noise: what training noises (pretrain.world.backbone)."""
        c = self.config
        if x.shape[1] != c.embed_dim:
            raise ValueError(f"pixel space takes {c.embed_dim}-channel images, got {tuple(x.shape)}")
        if x.shape[-1] % c.block or x.shape[-2] % c.block:
            raise ValueError(f"pixel space with {len(c.level_gains)} level gains takes image sides that are "
                             f"multiples of {c.block}, got {tuple(x.shape)}")
        return self._scale_bands(x, c.gains)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.latent(x) / self.config.scale_factor, torch.full_like(x, LOGVAR)], dim=1)

    def sample(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return latent_from_moments(moments, self.config.scale_factor, generator)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(self.encode_moments(x), generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._scale_bands(z, tuple(1.0 / g for g in self.config.gains))

    @staticmethod
    def _scale_bands(x: torch.Tensor, gains: tuple[float, ...]) -> torch.Tensor:
        if len(gains) == 1:
            return x if gains[0] == 1.0 else x * gains[0]
        return band_gains(x, gains)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, generator))


def load_pixel_space(path: str | os.PathLike, config: PixelSpaceConfig | dict, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> PixelSpace:
    """Frozen PixelSpace from its weights file; the file's scale must be the config's."""
    from .paths import WeightsError
    from .weights import as_config, load_frozen

    config = as_config(config, PixelSpaceConfig)  # a bad model_configs.json entry is a WeightsError naming it
    module = load_frozen(lambda: PixelSpace(config), path, "pixel space (pixel_space.safetensors)",
                         device=device, dtype=dtype)
    if module.scale.is_meta:  # names and shapes only (models.check_weights): no value to compare
        return module
    # compared at the precision it was loaded in (bf16 holds 0.18215 as 0.1826)
    tolerance = max(1e-3, 2 * torch.finfo(module.scale.dtype).eps) * config.scale_factor
    if abs(float(module.scale) - config.scale_factor) > tolerance:
        raise WeightsError(f"pixel space: {path} holds scale {float(module.scale)}, model_configs.json says "
                           f"{config.scale_factor}")
    return module
