"""Time grid, step orders, schedule functions and a sampler run with an exactly known predictor."""

import math

import pytest
import torch

from models.dpm_solver import sample, step_orders, time_grid
from models.noise_schedule import NoiseScheduleVP, interpolate, stable_diffusion_betas


@pytest.fixture(scope="module")
def schedule():
    return NoiseScheduleVP.stable_diffusion()


def test_step_orders():
    assert step_orders(30) == [3] * 9 + [2, 1]
    assert step_orders(50) == [3] * 16 + [2]
    assert step_orders(31) == [3] * 10 + [1]
    for steps in range(1, 60):
        for order in (1, 2, 3):
            assert sum(step_orders(steps, order)) == steps
    with pytest.raises(ValueError, match="order"):
        step_orders(10, 4)


def test_time_grid_30_and_50():
    g30 = time_grid(30) * 1000
    assert g30.dtype == torch.float64 and g30.numel() == 31
    assert g30[0] == 1000 and abs(g30[-1] - 1.0) < 1e-9
    assert torch.allclose(g30[:3], torch.tensor([1000.0, 966.7, 933.4], dtype=torch.float64))
    g50 = time_grid(50) * 1000
    assert torch.allclose(g50[[0, 1, -2]], torch.tensor([1000.0, 980.02, 20.98], dtype=torch.float64))


@pytest.mark.parametrize("steps", [30, 50])
def test_network_times_and_nfe(steps):
    seen = []

    def eps_fn(x, t):
        seen.append(float(t[0]) * 1000)
        return torch.zeros_like(x)

    out = sample(eps_fn, torch.randn(2, 5), steps=steps)
    assert out.dtype == torch.float32
    assert len(seen) == steps
    assert seen == pytest.approx((time_grid(steps) * 1000)[:-1].tolist(), abs=1e-3)
    assert seen[0] == 1000.0


def test_schedule_values(schedule):
    betas = stable_diffusion_betas()
    assert betas.dtype == torch.float64 and betas.numel() == 1000
    assert betas[0] == pytest.approx(0.00085) and betas[-1] == pytest.approx(0.012)
    n = torch.tensor([1, 2, 500, 999, 1000])
    assert torch.allclose(schedule.marginal_alpha(n / 1000) ** 2, schedule.alphas_cumprod[n], rtol=1e-12)
    assert schedule.alphas_cumprod[0] == 1.0
    t = torch.linspace(0.0005, 1.0, 101, dtype=torch.float64)
    a, s = schedule.marginal_alpha(t), schedule.marginal_std(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(t))
    assert torch.allclose(schedule.marginal_lambda(t), torch.log(a) - torch.log(s))


def test_inverse_lambda(schedule):
    t = torch.linspace(0.0002, 1.0, 777, dtype=torch.float64)  # includes the extrapolated range below 1/N
    assert torch.allclose(schedule.inverse_lambda(schedule.marginal_lambda(t)), t, rtol=0, atol=1e-9)
    assert float(schedule.inverse_lambda(schedule.marginal_lambda(0.5))) == pytest.approx(0.5, abs=1e-12)


def test_interpolate_extends_linearly():
    xp, fp = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    x = torch.tensor([-1.0, 0.5, 2.0, 5.0])
    assert torch.allclose(interpolate(x, xp, fp), torch.tensor([-2.0, 1.0, 2.5, 4.0]))


def test_add_noise(schedule):
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    n = torch.tensor([1, 500, 1000])
    xn = schedule.add_noise(x0, eps, n)
    ab = schedule.alphas_cumprod[n].view(3, 1, 1)
    torch.testing.assert_close(xn, (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).float())
    assert torch.equal(schedule.add_noise(x0, eps, 0), x0)
    assert schedule.add_noise(x0.half(), eps.half(), 7).dtype == torch.float16
    with pytest.raises(ValueError, match="0..1000"):
        schedule.add_noise(x0, eps, 1001)
    n = schedule.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert n.min() >= 1 and n.max() <= 1000 and n.dtype == torch.int64


def test_gaussian_data_exact_solution(schedule):
    """Data x0 ~ N(mu, s^2): eps*(x, t) = sigma_t (x - alpha_t mu) / v_t with v_t = alpha_t^2 s^2 + sigma_t^2,
    and the probability-flow ODE is affine: x_t = alpha_t mu + sqrt(v_t / v_T) (x_T - alpha_T mu).
    The solver converges to it as steps grow (slowly: the time-uniform grid ends with big lambda steps)."""
    mu, s = torch.tensor([1.5, -0.5, 0.0, 2.0], dtype=torch.float64), 0.3

    def v(t):
        return schedule.marginal_alpha(t) ** 2 * s**2 + schedule.marginal_std(t) ** 2

    def eps_fn(x, t):
        a, sig = schedule.marginal_alpha(t)[:, None], schedule.marginal_std(t)[:, None]
        return sig * (x - a * mu) / v(t)[:, None]

    x_T = torch.randn(2048, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_end = 1e-3
    a_end, a_T = schedule.marginal_alpha(t_end), schedule.marginal_alpha(1.0)
    exact = a_end * mu + math.sqrt(v(t_end) / v(1.0)) * (x_T - a_T * mu)
    errors = {n: float((sample(eps_fn, x_T, steps=n) - exact).abs().max() / exact.abs().max())
              for n in (10, 30, 50, 300)}
    assert errors[10] > errors[30] > errors[50] > errors[300]
    assert errors[30] < 0.06 and errors[300] < 0.005, errors
    # 50 steps: the samples' moments are those of the exact flow (the data's, up to the t = 1e-3 noise
    # and x_T ~ N(0, I) not being exactly the t = 1 marginal)
    out = sample(eps_fn, x_T, steps=50)
    assert torch.allclose(out.mean(0), exact.mean(0), atol=0.01)
    assert torch.allclose(out.std(0), exact.std(0), atol=0.01)
    assert torch.allclose(out.std(0), torch.full((4,), s, dtype=torch.float64), atol=0.03)


def test_float32_state_matches_float64(schedule):
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def eps_fn(x, t):
        return torch.tanh(x @ a.T.to(x.dtype)) * t[:, None].to(x.dtype) + 0.1 * x

    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = sample(eps_fn, x, steps=30)
    out = sample(eps_fn, x.float(), steps=30)
    assert out.dtype == torch.float32
    assert (out.double() - ref).norm() / ref.norm() < 1e-5


def test_add_noise_on_a_device_tensor_uses_device_tables():
    """Off the CPU, timesteps index tables on their own device (no host synchronisation); the meta
    device stands in for CUDA here: shapes and dtypes must come out right."""
    from models.noise_schedule import NoiseScheduleVP

    sched = NoiseScheduleVP.stable_diffusion()
    x0 = torch.zeros(3, 4, 8, 8, device="meta", dtype=torch.bfloat16)
    out = sched.add_noise(x0, torch.zeros_like(x0), torch.tensor([1, 500, 1000], device="meta"))
    assert out.shape == x0.shape and out.dtype == torch.bfloat16 and out.device.type == "meta"
    a, s = sched._noise_tables(torch.device("cpu"))
    torch.testing.assert_close(a[500].double() ** 2 + s[500].double() ** 2, torch.tensor(1.0, dtype=torch.float64))


def test_resample_joint_with_an_exact_denoiser_returns_the_clean_state(schedule):
    """SDEdit from t with a predictor that knows the clean state: the solver ends at alpha z0 + sigma eps
    of t_end (sigma 0.03), after round(steps * t) evaluations."""
    from models.guidance import combine_joint
    from models.sampling import resample_joint, resample_steps

    z0, clip0 = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 5)
    clean = combine_joint(z0, clip0)
    calls = []

    def eps_fn(x, t):
        calls.append(float(t[0]))
        a, s = schedule.marginal_alpha(t.double()).float()[:, None], schedule.marginal_std(t.double()).float()[:, None]
        return (x - a * clean) / s

    z, clip = resample_joint(eps_fn, z0, clip0, t_start=0.4, steps=30, schedule=schedule,
                             generator=torch.Generator().manual_seed(0))
    assert len(calls) == resample_steps(30, 0.4) == 12 and calls[0] == pytest.approx(0.4)
    assert z.shape == z0.shape and clip.shape == clip0.shape
    assert (z - z0).abs().max() < 0.15 and (clip - clip0).abs().max() < 0.15  # sigma(1/N) = 0.029
    assert (z - z0).abs().max() > 0  # the residual noise of t_end is there, as in sample_joint
    assert resample_steps(30, 0.01) == 1
    calls.clear()
    z, clip = resample_joint(eps_fn, z0, clip0, t_start=0.4, steps=30, schedule=schedule, final_denoise=True,
                             generator=torch.Generator().manual_seed(0))
    assert len(calls) == 13 and calls[-1] == pytest.approx(schedule.eps)  # one more, at t_end
    torch.testing.assert_close(z, z0, atol=1e-4, rtol=0)  # its data prediction: the clean state itself
    torch.testing.assert_close(clip, clip0, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="t_start"):
        resample_joint(eps_fn, z0, clip0, t_start=0.0, schedule=schedule)
