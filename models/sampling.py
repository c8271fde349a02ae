"""Text-to-image sampling of UniDiffuser's joint (z, image-CLIP) state: noise, DPM-Solver++, split.

    z, clip = sample_joint(eps_fn, batch, z_shape=(4, 64, 64), clip_dim=512, steps=30, generator=g)

The one sampling loop of the project: the pipeline (`models.pipeline.UniDiffuserT2I.sample_latents`)
and pretraining's validation grids (`pretrain/validation.py`) both call it. Precision is the
caller's: run it under the autocast its nets need.
"""

from __future__ import annotations

import torch

from . import dpm_solver
from .guidance import EpsFn, combine_joint, randn, split_joint
from .noise_schedule import NoiseScheduleVP


@torch.no_grad()
def sample_joint(eps_fn: EpsFn, batch: int, *, z_shape: tuple[int, int, int], clip_dim: int, steps: int = 30,
                 schedule: NoiseScheduleVP | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """From N(0, I) -> (z [B, C, h, w], clip [B, 1, clip_dim]), float32, on `device`.

    eps_fn(x [B, C*h*w + clip_dim] float32, t_cont [B]) -> the noise prediction of the joint state
    (models.guidance.text_guided_eps_fn or encoder.guidance.identity_guided_eps_fn build one).
    z is drawn first, then clip, from `generator` (the reference's order), before eps_fn's own
    draws. `steps` singlestep DPM-Solver++ evaluations (order 3) over `schedule` (default: Stable
    Diffusion's); `progress` shows a bar of them.
    """
    z = randn((batch, *z_shape), generator=generator, device=device)
    clip = randn((batch, 1, clip_dim), generator=generator, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sampling", unit="step", leave=False)
        inner = eps_fn

        def eps_fn(x, t):
            out = inner(x, t)
            bar.update(1)
            return out

    try:
        x = dpm_solver.sample(eps_fn, combine_joint(z, clip), steps=steps, schedule=schedule)
    finally:
        if bar is not None:
            bar.close()
    return split_joint(x.float(), z_shape, clip_dim)
