"""UniDiffuser's noise schedule: the Stable Diffusion betas, discrete and continuous-time views.

Discrete (training) view. With betas beta_1..beta_N (N = 1000) the network timestep n runs over
1..N and

    alpha_bar_n = prod_{k=1..n} (1 - beta_k),   x_n = sqrt(alpha_bar_n) x0 + sqrt(1 - alpha_bar_n) eps.

`alphas_cumprod` is indexed by that network timestep directly: it has N + 1 entries and
`alphas_cumprod[0] = 1` stands for the clean sample (n = 0, the t_text = 0 of a clean text). This is
the convention of UniDiffuser's training code (its schedule prepends a zero beta, samples n from
1..N and feeds n to the network unchanged), and it is the one the sampler below assumes: continuous
time t = n / N has alpha_t^2 = alpha_bar_n and the network receives t * N = n, with no -1 offset.

Continuous (sampling) view, `NoiseScheduleVP`. log alpha is tabulated at the knots t_k = k / N
(k = 1..N) as 0.5 * cumsum(log(1 - beta)) and interpolated piecewise-linearly in t, extended
linearly past both ends; sigma_t = sqrt(1 - alpha_t^2) and lambda_t = log alpha_t - log sigma_t
(half the log-SNR). All schedule math is float64; callers cast the few scalars they need.
"""

from __future__ import annotations

import torch

Tensorish = float | torch.Tensor


def stable_diffusion_betas(n: int = 1000) -> torch.Tensor:
    """The 'scaled linear' betas of Stable Diffusion / UniDiffuser: linspace(sqrt(0.00085), sqrt(0.012), n)^2.

    Returns [n] float64 (beta_1 .. beta_n).
    """
    return torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through knots (xp, fp), extended linearly past both ends.

    x any shape; xp, fp [K] with xp strictly increasing (K >= 2). Outside [xp[0], xp[-1]] the first
    or last segment's line is continued (unlike `numpy.interp`, which clamps).
    """
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class NoiseScheduleVP:
    """Variance-preserving schedule built from discrete betas (DPM-Solver's 'discrete' schedule).

    Time runs over (0, T] with T = 1; the smallest tabulated time is 1 / N. Every method takes a
    float or a tensor of any shape and returns float64 of the same shape (on the input's device).
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 2:
            raise ValueError(f"need at least 2 betas, got {betas.numel()}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie strictly between 0 and 1")
        self.betas = betas
        self.total_N = betas.numel()
        self.T = 1.0
        self.t_array = torch.arange(1, self.total_N + 1, dtype=torch.float64) / self.total_N  # [N] knots
        self.log_alpha_array = 0.5 * torch.log1p(-betas).cumsum(0)  # [N], decreasing
        # Discrete view, indexed by network timestep n = 0..N (0 = clean).
        self.alphas_cumprod = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # see _noise_tables

    @classmethod
    def stable_diffusion(cls, n: int = 1000) -> NoiseScheduleVP:
        """UniDiffuser's schedule (the default everywhere)."""
        return cls(stable_diffusion_betas(n))

    @property
    def eps(self) -> float:
        """The smallest tabulated time, 1 / N: where sampling ends (0.001 for N = 1000)."""
        return 1.0 / self.total_N

    # ---- continuous time ------------------------------------------------------------------
    @staticmethod
    def _as64(t: Tensorish) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def marginal_log_mean_coeff(self, t: Tensorish) -> torch.Tensor:
        """log alpha_t."""
        t = self._as64(t)
        return interpolate(t, self.t_array.to(t.device), self.log_alpha_array.to(t.device))

    def marginal_alpha(self, t: Tensorish) -> torch.Tensor:
        """alpha_t = sqrt(alpha_bar) at t."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: Tensorish) -> torch.Tensor:
        """sigma_t = sqrt(1 - alpha_t^2)."""
        return torch.sqrt(-torch.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: Tensorish) -> torch.Tensor:
        """lambda_t = log alpha_t - log sigma_t."""
        log_mean = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(-torch.expm1(2.0 * log_mean))
        return log_mean - log_std

    def inverse_lambda(self, lamb: Tensorish) -> torch.Tensor:
        """The time t with marginal_lambda(t) == lamb (same piecewise-linear map, read backwards)."""
        lamb = self._as64(lamb)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return interpolate(log_alpha, self.log_alpha_array.flip(0).to(lamb.device),
                           self.t_array.flip(0).to(lamb.device))

    # ---- discrete time (training) ----------------------------------------------------------
    def _noise_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alpha_bar_n), sqrt(1 - alpha_bar_n)) for n = 0..N, float32 on `device`, cached."""
        key = str(device)
        if key not in self._tables:
            ab = self.alphas_cumprod
            self._tables[key] = (ab.sqrt().float().to(device), (1 - ab).sqrt().float().to(device))
        return self._tables[key]

    def sample_timesteps(self, batch: int, *, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """n ~ U{1..N}, [batch] int64: the training timestep of each example."""
        gen_device = generator.device if generator is not None else "cpu"
        n = torch.randint(1, self.total_N + 1, (batch,), generator=generator, device=gen_device)
        return n.to(device) if device is not None else n

    def snr(self, n: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_n / (1 - alpha_bar_n) at integer timesteps n in 1..N, float32
        on n's device (no host synchronisation)."""
        sqrt_ab, sqrt_1m = self._noise_tables(n.device)
        return (sqrt_ab[n] / sqrt_1m[n]) ** 2

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
        """x_n = sqrt(alpha_bar_n) x0 + sqrt(1 - alpha_bar_n) eps, in x0's dtype.

        x0, eps [B, ...]; n an int or an integer tensor [B] of network timesteps in 0..N
        (0 leaves x0 unchanged; training uses 1..N, see `sample_timesteps`).
        """
        if x0.shape != eps.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape")
        if torch.is_tensor(n) and n.device.type != "cpu":
            # the training hot path: tables indexed on the device, no host synchronisation (the
            # range of n is not checked here; sample_timesteps draws it in range)
            if n.ndim != 1 or n.shape[0] != x0.shape[0]:
                raise ValueError(f"n must have one entry per example ({x0.shape[0]}), got shape {tuple(n.shape)}")
            sqrt_ab, sqrt_1m = self._noise_tables(n.device)
            shape = (-1,) + (1,) * (x0.ndim - 1)
            a, s = sqrt_ab[n].reshape(shape).to(x0.dtype), sqrt_1m[n].reshape(shape).to(x0.dtype)
            return a * x0 + s * eps
        n = torch.as_tensor(n, device="cpu").long() if not torch.is_tensor(n) else n.detach().long()
        if n.numel() and (int(n.min()) < 0 or int(n.max()) > self.total_N):
            raise ValueError(f"timesteps must be integers in 0..{self.total_N} (1..{self.total_N} for training), "
                             f"got range {int(n.min())}..{int(n.max())}")
        if n.ndim > 1 or (n.ndim == 1 and n.numel() != x0.shape[0]):
            raise ValueError(f"n must be a scalar or have one entry per example ({x0.shape[0]}), "
                             f"got shape {tuple(n.shape)}")
        ab = self.alphas_cumprod[n]
        shape = (-1,) + (1,) * (x0.ndim - 1) if n.ndim == 1 else ()
        a = ab.sqrt().reshape(shape).to(device=x0.device, dtype=x0.dtype)
        s = (1 - ab).sqrt().reshape(shape).to(device=x0.device, dtype=x0.dtype)
        return a * x0 + s * eps
