"""DPM-Solver++ (data prediction), singlestep "fast" method: the reference text-to-image sampler.

Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models" (2022).
In the half-log-SNR variable lambda the probability-flow ODE has an exactly integrable linear part;
an order-k step from s to t (h = lambda_t - lambda_s) Taylor-expands the data prediction
x0(x, u) = (x - sigma_u eps(x, u)) / alpha_u and needs k evaluations of it.

Grid and step orders follow the reference settings: time-uniform grid linspace(1, 1/N, steps + 1);
order-3 steps (plus a closing 2/1 or 1 or 2) spanning consecutive grid points, so the predictor runs
at every grid point except the last: exactly `steps` network evaluations and no final denoise step
(`final_denoise` adds one, off by default: the reference sampler has none).

The state x is updated in its own dtype; schedule coefficients are computed in float64 and applied
as Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .noise_schedule import NoiseScheduleVP

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""eps_fn(x [B, ...], t_cont [B]) -> predicted noise [B, ...]; the caller scales t by N for the network."""


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """Time-uniform grid linspace(t_start, t_end, steps + 1), float64 [steps + 1], decreasing."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not t_start > t_end > 0:
        raise ValueError(f"need t_start > t_end > 0, got t_start={t_start}, t_end={t_end}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


def step_orders(steps: int, order: int = 3) -> list[int]:
    """Orders of the singlestep solver's steps; they sum to `steps` (one evaluation per grid point).

    order 3: K = steps // 3 + 1 and steps % 3 == 0 -> [3]*(K-2) + [2, 1]; == 1 -> [3]*(K-1) + [1];
    == 2 -> [3]*(K-1) + [2]. order 2: [2]*(steps//2) (+ [1] when odd). order 1: [1]*steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    if order == 1:
        return [1] * steps
    raise ValueError(f"order must be 1, 2 or 3, got {order}")


def sample(eps_fn: EpsFn, x: torch.Tensor, steps: int = 30, order: int = 3, *,
           schedule: NoiseScheduleVP | None = None, t_start: float | None = None,
           t_end: float | None = None, final_denoise: bool = False) -> torch.Tensor:
    """Integrate from t_start (default T = 1) down to t_end (default 1/N) with `steps` evaluations.

    x [B, ...]: the initial noise (any shape, any float dtype); returns the final state, same shape
    and dtype. eps_fn(x, t_cont [B]) gets t_cont in float64 for a float64 x, float32 otherwise.
    `schedule` defaults to the Stable Diffusion schedule (N = 1000). final_denoise: one more
    evaluation at t_end returns its data prediction instead of the state, which still holds noise of
    std sigma(t_end) (DPM-Solver's "denoise to zero"); it matters where that noise is large next to
    the data, as in a pixel space with a gain below 1 (models.pixel_space).
    """
    schedule = schedule or NoiseScheduleVP.stable_diffusion()
    grid = time_grid(steps, schedule.T if t_start is None else t_start,
                     schedule.eps if t_end is None else t_end)
    lam = schedule.marginal_lambda(grid).tolist()
    alpha = schedule.marginal_alpha(grid).tolist()
    sigma = schedule.marginal_std(grid).tolist()
    t_dtype = torch.promote_types(x.dtype, torch.float32)

    def data_pred(x: torch.Tensor, i: int) -> torch.Tensor:
        """x0 prediction at grid point i."""
        t = torch.full((x.shape[0],), float(grid[i]), dtype=t_dtype, device=x.device)
        eps = eps_fn(x, t)
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for a state of shape "
                             f"{tuple(x.shape)}")
        return (x - sigma[i] * eps.to(x.dtype)) / alpha[i]

    i = 0
    for k in step_orders(steps, order):
        x = _singlestep_update(x, data_pred, i, k, lam, alpha, sigma)
        i += k
    return data_pred(x, i) if final_denoise else x


def _singlestep_update(x: torch.Tensor, data_pred: Callable[[torch.Tensor, int], torch.Tensor], s: int,
                       k: int, lam: list[float], alpha: list[float], sigma: list[float]) -> torch.Tensor:
    """One order-k DPM-Solver++ step from grid point s to grid point s + k (k evaluations)."""
    t = s + k
    h = lam[t] - lam[s]
    phi_1 = math.expm1(-h)
    d0 = data_pred(x, s)
    if k == 1:
        return (sigma[t] / sigma[s]) * x - (alpha[t] * phi_1) * d0

    s1 = s + 1
    r1 = (lam[s1] - lam[s]) / h
    x_s1 = (sigma[s1] / sigma[s]) * x - (alpha[s1] * math.expm1(-r1 * h)) * d0
    d1 = data_pred(x_s1, s1)
    if k == 2:
        return ((sigma[t] / sigma[s]) * x - (alpha[t] * phi_1) * d0
                - (0.5 / r1 * alpha[t] * phi_1) * (d1 - d0))

    s2 = s + 2
    r2 = (lam[s2] - lam[s]) / h
    phi_12 = math.expm1(-r2 * h)
    phi_22 = phi_12 / (r2 * h) + 1.0
    phi_2 = phi_1 / h + 1.0
    x_s2 = ((sigma[s2] / sigma[s]) * x - (alpha[s2] * phi_12) * d0
            + (r2 / r1 * alpha[s2] * phi_22) * (d1 - d0))
    d2 = data_pred(x_s2, s2)
    return (sigma[t] / sigma[s]) * x - (alpha[t] * phi_1) * d0 + (alpha[t] * phi_2 / r2) * (d2 - d0)
