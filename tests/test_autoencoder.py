"""AutoencoderKL on the tiny config: shapes, the sampling formula, decode scaling, save/load."""

import dataclasses
import json

import pytest
import torch

from models import AutoencoderConfig, AutoencoderKL, load_autoencoder
from models.weights import save_state_dict


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig.tiny()).eval()


@torch.no_grad()
def test_round_trip_shapes():
    ae = tiny_autoencoder()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    moments = ae.encode_moments(x)
    assert moments.shape == (2, 8, 16, 24)
    z = ae.encode(x)
    assert z.shape == (2, 4, 16, 24)
    assert ae.decode(z).shape == x.shape
    assert ae(x).shape == x.shape
    with pytest.raises(ValueError, match="not divisible"):
        ae.encode_moments(torch.zeros(1, 3, 31, 32))


@torch.no_grad()
def test_sampling_formula():
    ae = tiny_autoencoder()
    mean = torch.randn(2, 4, 5, 5)
    logvar = torch.randn(2, 4, 5, 5) * 3
    logvar[0, 0, 0, 0], logvar[0, 0, 0, 1] = 50.0, -80.0  # clamped to 20 and -30
    moments = torch.cat([mean, logvar], dim=1)
    z = ae.sample(moments, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(7))
    expected = 0.18215 * (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps)
    torch.testing.assert_close(z, expected)
    big = 0.18215 * (mean[0, 0, 0, 0] + eps[0, 0, 0, 0] * torch.exp(torch.tensor(10.0)))
    assert z[0, 0, 0, 0] == pytest.approx(big.item())
    # encode = sample(encode_moments(x)) with the same generator state
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a = ae.encode(x, generator=torch.Generator().manual_seed(1))
    b = ae.sample(ae.encode_moments(x), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@torch.no_grad()
def test_latent_is_the_scaled_posterior_mean():
    ae = tiny_autoencoder()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = ae.encode_moments(x).chunk(2, dim=1)[0]
    torch.testing.assert_close(ae.latent(x), 0.18215 * mean)
    assert ae.latent(x).shape == ae.encode(x).shape


@torch.no_grad()
def test_decode_unscales_before_post_quant_conv():
    ae = tiny_autoencoder()
    z = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(ae.decode(z), ae.decoder(ae.post_quant_conv(z / 0.18215)))


def test_config_formats(golden_dir):
    nested = json.loads((golden_dir / "autoencoder_tiny.config.json").read_text())
    assert AutoencoderConfig.from_dict(nested) == AutoencoderConfig.tiny()
    flat = dataclasses.asdict(AutoencoderConfig.tiny())
    assert AutoencoderConfig.from_dict(flat) == AutoencoderConfig.tiny()
    with pytest.raises(ValueError, match="unknown keys"):
        AutoencoderConfig.from_dict(flat | {"chanels": 3})


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@torch.no_grad()
def test_save_load_round_trip(tmp_path, suffix):
    ae = tiny_autoencoder(seed=2)
    state = ae.state_dict() | {"loss.logvar": torch.zeros(())}  # LDM training checkpoints carry loss.*
    path = save_state_dict(state, tmp_path / f"autoencoder_kl{suffix}")
    loaded = load_autoencoder(path, AutoencoderConfig.tiny())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode_moments(x), ae.encode_moments(x))
    z = torch.randn(1, 4, 16, 16)
    assert torch.equal(loaded.decode(z), ae.decode(z))
    double = load_autoencoder(path, dataclasses.asdict(AutoencoderConfig.tiny()), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
