"""DPM-Solver++ against golden outputs of the public reference sampler (float64, analytic predictor)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.dpm_solver import sample

GOLDEN = Path(__file__).parent / "reference" / "golden" / "dpm_solver.io.safetensors"


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN))


@pytest.mark.parametrize("steps", [10, 30, 50])
def test_reproduces_reference(golden, steps):
    a = golden["in.A"]
    calls = []

    def eps_fn(x, t_cont):
        assert t_cont.dtype == torch.float64 and t_cont.shape == (x.shape[0],)
        t = t_cont * 1000
        calls.append(float(t[0]))
        return torch.tanh(x @ a.T) * (t[:, None] / 1000) + 0.1 * x

    x0 = golden["in.x_init"].clone()
    out = sample(eps_fn, x0, steps=steps)
    ref = golden[f"out.x_{steps}"]
    assert out.dtype == torch.float64 and out.shape == ref.shape
    assert torch.equal(x0, golden["in.x_init"]), "the input state must not be modified in place"
    assert (out - ref).norm() / ref.norm() < 1e-6
    model_t = golden[f"out.model_t_{steps}"]
    assert len(calls) == steps == model_t.numel()
    assert torch.allclose(torch.tensor(calls, dtype=torch.float64), model_t, rtol=0, atol=1e-3)
