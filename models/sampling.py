"""Text-to-image sampling of UniDiffuser's joint (z, image-CLIP) state: noise, DPM-Solver++, split.

    z, clip = sample_joint(eps_fn, batch, z_shape=(4, 64, 64), clip_dim=512, steps=30, generator=g)
    z, clip = resample_joint(eps_fn, z0, clip0, t_start=0.4, steps=30, generator=g)   # SDEdit

The one sampling loop of the project: the pipeline (`models.pipeline.UniDiffuserT2I.sample_latents`)
and pretraining's validation grids (`pretrain/validation.py`) both call it; `resample_joint` starts
the same solver from a clean state noised to an intermediate time (eval.world_reconstruction).
Precision is the caller's: run it under the autocast its nets need.
"""

from __future__ import annotations

import torch

from . import dpm_solver
from .guidance import EpsFn, combine_joint, randn, split_joint
from .noise_schedule import NoiseScheduleVP


@torch.no_grad()
def sample_joint(eps_fn: EpsFn, batch: int, *, z_shape: tuple[int, int, int], clip_dim: int, steps: int = 30,
                 schedule: NoiseScheduleVP | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, progress: bool = False,
                 final_denoise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """From N(0, I) -> (z [B, C, h, w], clip [B, 1, clip_dim]), float32, on `device`.

    eps_fn(x [B, C*h*w + clip_dim] float32, t_cont [B]) -> the noise prediction of the joint state
    (models.guidance.text_guided_eps_fn or encoder.guidance.identity_guided_eps_fn build one).
    z is drawn first, then clip, from `generator` (the reference's order), before eps_fn's own
    draws. `steps` singlestep DPM-Solver++ evaluations (order 3) over `schedule` (default: Stable
    Diffusion's); `progress` shows a bar of them; `final_denoise` adds one evaluation that returns the
    last step's data prediction (dpm_solver.sample).
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
        x = dpm_solver.sample(eps_fn, combine_joint(z, clip), steps=steps, schedule=schedule,
                              final_denoise=final_denoise)
    finally:
        if bar is not None:
            bar.close()
    return split_joint(x.float(), z_shape, clip_dim)


def resample_steps(steps: int, t_start: float) -> int:
    """Evaluations of a run from t_start that keeps a full run's grid density: round(steps * t_start), >= 1."""
    return max(1, round(steps * t_start))


@torch.no_grad()
def resample_joint(eps_fn: EpsFn, z0: torch.Tensor, clip0: torch.Tensor, *, t_start: float, steps: int = 30,
                   schedule: NoiseScheduleVP | None = None, generator: torch.Generator | None = None,
                   final_denoise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SDEdit (Meng et al., 2022): clean (z0 [B, C, h, w], clip0 [B, 1, D]) noised to the continuous time
    t_start in (0, 1], x = alpha z0 + sigma eps, then integrated down with sample_joint's solver over
    resample_steps(steps, t_start) evaluations (a full run's grid density). Returns (z, clip) float32
    on z0's device. The noise of z is drawn first, then clip's, from `generator`. final_denoise: as in
    sample_joint."""
    schedule = schedule or NoiseScheduleVP.stable_diffusion()
    if not schedule.eps < t_start <= schedule.T:
        raise ValueError(f"t_start must lie in ({schedule.eps}, {schedule.T}], got {t_start}")
    t = torch.tensor([t_start], dtype=torch.float64)
    alpha, sigma = float(schedule.marginal_alpha(t)), float(schedule.marginal_std(t))
    device = z0.device
    noise_z = randn(z0.shape, generator=generator, device=device)
    noise_c = randn(clip0.shape, generator=generator, device=device)
    x = combine_joint(alpha * z0.float() + sigma * noise_z, alpha * clip0.float() + sigma * noise_c)
    x = dpm_solver.sample(eps_fn, x, steps=resample_steps(steps, t_start), schedule=schedule, t_start=t_start,
                          final_denoise=final_denoise)
    return split_joint(x.float(), tuple(z0.shape[1:]), clip0.shape[-1])
