"""Classifier-free guidance with identity.

Passes (all at the same noisy state and timestep, data_type = 1):
  cond       text, t_text = 0, identity tokens at `id_scale`
  uncond     fresh Gaussian noise as text, t_text = 1000, no identity (UniDiffuser's "true_uncond")
  text_only  text, t_text = 0, no identity            (only with a separate identity scale)

Two passes:   eps = cond + s (cond - uncond)                      (the reference form, s = 7)
Three passes: eps = uncond + (1 + s)(text_only - uncond) + (1 + s_id)(cond - text_only)
which equals the two-pass result when s_id = s. All passes run as one batched call by default:
the identity-free samples get id_scale 0, which is exactly the plain UViT.

id_start: the identity is used only at noise levels t <= id_start (t in (0, 1], 1 = pure noise). Above it
the passes run without identity (plain text guidance), so the prompt lays out the image and sets its colours
before the identity joins; 1 (the default) uses it at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.guidance import cfg_combine, combine_joint, randn, split_joint


def identity_guided_eps_fn(net, text: torch.Tensor, id_tokens: torch.Tensor | None, *,
                           z_shape: tuple[int, int, int], clip_dim: int, scale: float = 7.0,
                           id_scale: float = 1.0, id_guidance: float | None = None, id_start: float = 1.0,
                           generator: torch.Generator | None = None, batch_passes: bool = True,
                           n_timesteps: int = 1000, data_type: int = 1) -> Callable:
    """Build eps_fn(x [B, N], t_cont [B]) -> [B, N] for the DPM-Solver.

    net: an `IDConditionedUViT` (or anything with its signature); text [B, n_text, text_dim];
    id_tokens [1 or B, K, token_dim] or None (then plain text guidance); id_start: see the module docstring.
    """
    if not 0 < id_start <= 1:
        raise ValueError(f"id_start is a noise level in (0, 1], got {id_start}")
    b = text.shape[0]

    def eps_fn(x: torch.Tensor, t_cont: torch.Tensor) -> torch.Tensor:
        z, clip = split_joint(x, z_shape, clip_dim)
        t_img = (t_cont * n_timesteps).to(x.dtype).expand(b)
        zeros = torch.zeros(b, device=x.device, dtype=x.dtype)
        dtype_ids = torch.full((b,), data_type, device=x.device, dtype=torch.long)
        # every sample shares one t; compared in t's own precision, so t = id_start counts as below (and
        # not at all at the default, which would cost a device sync per step)
        windowed = id_start < 1 and id_tokens is not None
        tokens = None if windowed and not bool((t_cont <= id_start).all()) else id_tokens
        three = id_guidance is not None and tokens is not None
        # (text, t_text, id_scale) of each pass
        passes = [(text, zeros, id_scale if tokens is not None else 0.0)]
        if scale:
            noise_text = randn(text.shape, generator=generator, device=text.device, dtype=text.dtype)
            passes.append((noise_text, zeros + n_timesteps, 0.0))
        if three and scale:
            passes.append((text, zeros, 0.0))
        # guidance arithmetic in the sampler's dtype (float32), whatever precision the net runs in
        outs = [o.to(x.dtype) for o in _run(net, z, clip, t_img, dtype_ids, passes, tokens, batch_passes)]
        if len(outs) == 1:
            return outs[0]
        cond, uncond = outs[0], outs[1]
        if len(outs) == 2:
            return cfg_combine(cond, uncond, scale)
        text_only = outs[2]
        return uncond + (1 + scale) * (text_only - uncond) + (1 + id_guidance) * (cond - text_only)

    return eps_fn


def _run(net, z, clip, t_img, dtype_ids, passes, id_tokens, batch_passes) -> list[torch.Tensor]:
    """Evaluate the passes (batched into one call or one by one) -> joint eps per pass."""
    n = len(passes)
    b = z.shape[0]
    if batch_passes and n > 1:
        rep = lambda t: torch.cat([t] * n, dim=0)  # noqa: E731
        text = torch.cat([p[0] for p in passes], dim=0)
        t_text = torch.cat([p[1] for p in passes], dim=0)
        scales = torch.cat([torch.full((b,), float(p[2]), device=z.device, dtype=z.dtype) for p in passes])
        tokens = None if id_tokens is None else id_tokens.expand(b, -1, -1).repeat(n, 1, 1)
        out = _call(net, rep(z), rep(clip), text, rep(t_img), t_text, rep(dtype_ids), tokens, scales)
        return list(combine_joint(out[0], out[1]).chunk(n, dim=0))
    res = []
    for text, t_text, s in passes:
        out = _call(net, z, clip, text, t_img, t_text, dtype_ids, id_tokens if s else None, s)
        res.append(combine_joint(out[0], out[1]))
    return res


def _call(net, z, clip, text, t_img, t_text, dtype_ids, tokens, scales):
    if tokens is None:
        return net(z, clip, text, t_img, t_text, dtype_ids)
    return net(z, clip, text, t_img, t_text, dtype_ids, id_tokens=tokens, id_scale=scales)
