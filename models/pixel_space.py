"""Pixel space: the identity world's "autoencoder", with AutoencoderKL's interface and no network.

The latent is the image itself times a gain g, [B, 3, 64, 64] with x in [-1, 1], so the pipeline,
the shards' `moments`, pretrain's losses and personalize's refinement run on it unchanged:

    encode_moments(x) = cat([g x / s, LOGVAR])      moments [B, 6, H, W]: mean and log-variance
    sample(moments)   = s * (mean + exp(LOGVAR / 2) * eps) = g x   (up to 1e-7: exp(-15) * s)
    decode(z)         = z / g

where s = config.scale_factor and g = config.signal_scale. s only says how the moments store the
latent. It is 0.18215 by default, AutoencoderKL v1's, because pretrain/losses.py draws shard
latents as 0.18215 * (mean + std * eps): moments of g x / 0.18215 give back z = g x there too.

g (default 1) shifts the noise schedule towards noise: UniDiffuser's schedule was made for latents,
and on 64x64 pixels its noisiest timestep still shows the image's large colour areas (a model reads
an image's mean colour off it, and then reads it off the pure noise that sampling starts from,
instead of taking it from the prompt). A gain g < 1 multiplies every timestep's signal-to-noise
ratio by g^2 without touching the schedule, the sampler or the objective.

The module holds its scale factor as its one frozen tensor (`scale`), so that it has a weights file
(`pixel_space.safetensors`, found where autoencoder_kl.pth would be), a dtype and a fingerprint like
every other part. A weights folder selects it in model_configs.json:
{"autoencoder": {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.18215}}.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .autoencoder import latent_from_moments
from .config_dict import config_from_dict

KIND = "pixel_space"
LOGVAR = -30.0  # the smallest log-variance latent_from_moments keeps (it clamps at -30)


@dataclass(frozen=True)
class PixelSpaceConfig:
    """embed_dim: image channels (= the UViT's in_chans); scale_factor, signal_scale: see the module
    docstring."""

    kind: str = KIND
    embed_dim: int = 3
    scale_factor: float = 0.18215
    signal_scale: float = 1.0

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"pixel space config kind must be {KIND!r}, not {self.kind!r}")
        if self.scale_factor <= 0 or self.signal_scale <= 0:
            raise ValueError(f"scale_factor and signal_scale must be positive, not {self.scale_factor}, "
                             f"{self.signal_scale}")

    @property
    def downsample_factor(self) -> int:
        return 1

    @classmethod
    def from_dict(cls, d: dict) -> PixelSpaceConfig:
        return config_from_dict(cls, d, "pixel space")


def is_pixel_space_config(config) -> bool:
    """Whether an "autoencoder" entry of model_configs.json (or a config object) selects pixel space."""
    return isinstance(config, PixelSpaceConfig) or (isinstance(config, dict) and config.get("kind") == KIND)


class PixelSpace(nn.Module):
    """Image <-> latent, the identity map (AutoencoderKL's methods; see the module docstring).

    encode_moments(x [B, C, H, W] in [-1, 1]) -> moments [B, 2C, H, W]
    sample(moments) -> z [B, C, H, W];  encode(x) = sample(encode_moments(x)) = g x
    decode(z [B, C, H, W]) -> x [B, C, H, W] (= z / g)
    """

    def __init__(self, config: PixelSpaceConfig | None = None):
        super().__init__()
        self.config = config or PixelSpaceConfig()
        self.scale = nn.Parameter(torch.tensor([self.config.scale_factor]), requires_grad=False)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.config.embed_dim:
            raise ValueError(f"pixel space takes {self.config.embed_dim}-channel images, got {tuple(x.shape)}")
        c = self.config
        return torch.cat([x * (c.signal_scale / c.scale_factor), torch.full_like(x, LOGVAR)], dim=1)

    def sample(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return latent_from_moments(moments, self.config.scale_factor, generator)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(self.encode_moments(x), generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.config.signal_scale == 1.0 else z / self.config.signal_scale

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, generator))


def load_pixel_space(path: str | os.PathLike, config: PixelSpaceConfig | dict, *,
                     device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> PixelSpace:
    """Frozen PixelSpace from its weights file; the file's scale must be the config's."""
    from .paths import WeightsError
    from .weights import load_frozen

    if isinstance(config, dict):
        try:
            config = PixelSpaceConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"bad pixel space entry in the weights folder's model_configs.json: {e}") from e
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
