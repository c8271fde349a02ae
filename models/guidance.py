"""Classifier-free guidance for text-to-image over UniDiffuser's joint (z, image-CLIP) state.

In text-to-image the sampler integrates one flat state per sample, the concatenation of the
flattened latent z [C, H, W] and the image-CLIP embedding [1, D]; the text is a clean condition
(t_text = 0). Guidance combines a conditional and an unconditional prediction:

    eps = cond + scale * (cond - uncond)

Unconditional modes:
- "true_uncond" (reference default): the text is replaced by fresh N(0, I) noise at every
  evaluation and told to be fully noised (t_text = N), i.e. the text marginal is integrated out.
- "empty_token": the encoded empty prompt with t_text = 0.

Nets are callables with the UViT signature
    net(img [B, C, H, W], clip_img [B, 1, D], text [B, L, Dt], t_img [B], t_text [B], data_type [B] long)
        -> (img_out, clip_img_out, text_out)
so a wrapper that adds identity tokens (encoder/) can stand in for the conditional net.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from einops import rearrange

Net = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GuidanceMode = Literal["true_uncond", "empty_token"]


def randn(shape: Sequence[int], *, generator: torch.Generator | None = None,
          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) of `shape` on `device`, drawn on the generator's own device (so a CPU generator gives
    the same numbers whatever device the result lives on)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def cast_net(net: Net, dtype: torch.dtype) -> Net:
    """Wrap `net` so that its floating inputs are cast to `dtype` (e.g. half-precision weights driven
    by a float32 sampler state); integer inputs (data_type) and timesteps pass unchanged, extra
    keyword inputs (a wrapper's conditioning) are cast too. Outputs are as `net` gives."""

    def cast(v):
        return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v

    def wrapped(img, clip_img, text, t_img, t_text, data_type, **kwargs):
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        return net(cast(img), cast(clip_img), cast(text), t_img, t_text, data_type, **kwargs)

    return wrapped


def combine_joint(z: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """z [B, C, H, W], clip [B, 1, D] -> flat joint state [B, C*H*W + D]."""
    return torch.cat([rearrange(z, "b c h w -> b (c h w)"), rearrange(clip, "b l d -> b (l d)")], dim=-1)


def split_joint(x: torch.Tensor, z_shape: Sequence[int], clip_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat joint state [B, C*H*W + D] -> (z [B, C, H, W], clip [B, 1, D]); z_shape = (C, H, W)."""
    c, h, w = z_shape
    if x.ndim != 2 or x.shape[1] != c * h * w + clip_dim:
        raise ValueError(f"joint state of shape {tuple(x.shape)} does not hold z {tuple(z_shape)} "
                         f"plus a {clip_dim}-d image-CLIP token (expected [B, {c * h * w + clip_dim}])")
    z, clip = x.split([c * h * w, clip_dim], dim=1)
    return (rearrange(z, "b (c h w) -> b c h w", c=c, h=h, w=w),
            rearrange(clip, "b (l d) -> b l d", l=1))


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """cond + scale * (cond - uncond) (scale 0 returns cond)."""
    return cond + scale * (cond - uncond)


def text_guided_eps_fn(cond_net: Net, uncond_net: Net, text: torch.Tensor, scale: float | None, *,
                       z_shape: Sequence[int], clip_dim: int, mode: GuidanceMode = "true_uncond",
                       empty_text: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       batch_passes: bool = True, data_type: int = 1,
                       n_timesteps: int = 1000) -> EpsFn:
    """Build eps_fn(x [B, C*H*W + D], t_cont [B]) -> [B, C*H*W + D] for `models.dpm_solver.sample`.

    text [B, L, Dt]: the encoded prompts (the conditional text). t_img = t_cont * n_timesteps.
    empty_text [1 or B, L, Dt]: the encoded empty prompt, required for mode "empty_token".
    When cond_net is uncond_net and batch_passes, the two passes run as one call on a doubled batch;
    otherwise as two calls. scale 0 or None: no unconditional pass. Outputs are in x's dtype.
    """
    if mode not in ("true_uncond", "empty_token"):
        raise ValueError(f"unknown guidance mode {mode!r}; use 'true_uncond' or 'empty_token'")
    guided = bool(scale)
    if guided and mode == "empty_token":
        if empty_text is None:
            raise ValueError("mode 'empty_token' needs empty_text (the encoded empty prompt, [1, L, Dt])")
        if empty_text.shape[1:] != text.shape[1:]:
            raise ValueError(f"empty_text {tuple(empty_text.shape)} does not match text {tuple(text.shape)}")
    batched = batch_passes and cond_net is uncond_net

    def eps_fn(x: torch.Tensor, t_cont: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if text.shape[0] != b:
            raise ValueError(f"text has batch {text.shape[0]} but the state has batch {b}")
        z, clip = split_joint(x, z_shape, clip_dim)
        t_img = t_cont * n_timesteps
        t_zero = torch.zeros_like(t_img)
        dtype_ids = torch.full((b,), data_type, dtype=torch.long, device=x.device)
        if not guided:
            return combine_joint(*cond_net(z, clip, text, t_img, t_zero, dtype_ids)[:2]).to(x.dtype)

        if mode == "true_uncond":
            u_text = randn(text.shape, generator=generator, device=text.device, dtype=text.dtype)
            u_t_text = torch.full_like(t_img, float(n_timesteps))
        else:
            u_text = empty_text.to(device=text.device, dtype=text.dtype).expand(b, -1, -1)
            u_t_text = t_zero

        if batched:
            img_out, clip_out, _ = cond_net(
                torch.cat([z, z]), torch.cat([clip, clip]), torch.cat([text, u_text]),
                torch.cat([t_img, t_img]), torch.cat([t_zero, u_t_text]), torch.cat([dtype_ids, dtype_ids]))
            cond, uncond = combine_joint(img_out, clip_out).to(x.dtype).chunk(2)
        else:
            cond = combine_joint(*cond_net(z, clip, text, t_img, t_zero, dtype_ids)[:2]).to(x.dtype)
            uncond = combine_joint(*uncond_net(z, clip, u_text, t_img, u_t_text, dtype_ids)[:2]).to(x.dtype)
        return cfg_combine(cond, uncond, scale)

    return eps_fn
