"""UViT and AutoencoderKL loaded through the public loaders reproduce the reference code's outputs."""

import json

import torch
from safetensors.torch import load_file

from models import load_autoencoder, load_uvit


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def test_uvit_tiny_golden(golden_dir):
    config = json.loads((golden_dir / "uvit_tiny.config.json").read_text())
    uvit = load_uvit(golden_dir / "uvit_tiny.weights.safetensors", config)
    io = load_file(str(golden_dir / "uvit_tiny.io.safetensors"))
    inputs = [io[f"in.{k}"] for k in ("img", "clip_img", "text", "t_img", "t_text", "data_type")]
    outputs = uvit(*inputs)
    for name, out in zip(("img", "clip_img", "text"), outputs, strict=True):
        ref = io[f"out.{name}"]
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert rel_err(out, ref) < 1e-5, name


@torch.no_grad()
def test_autoencoder_tiny_golden(golden_dir):
    config = json.loads((golden_dir / "autoencoder_tiny.config.json").read_text())
    ae = load_autoencoder(golden_dir / "autoencoder_tiny.weights.safetensors", config)
    io = load_file(str(golden_dir / "autoencoder_tiny.io.safetensors"))
    moments = ae.encode_moments(io["in.image"])
    assert moments.shape == io["out.moments"].shape
    assert rel_err(moments, io["out.moments"]) < 1e-5
    decoded = ae.decode(io["in.z"])
    assert decoded.shape == io["out.decoded"].shape
    assert rel_err(decoded, io["out.decoded"]) < 1e-5
