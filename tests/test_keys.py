"""Full-size v1 modules, built on the meta device, have exactly the released state-dict names and shapes."""

import json

import pytest
import torch

from models import AutoencoderConfig, AutoencoderKL, CaptionDecoder, CaptionDecoderConfig, UViT, UViTConfig

MODULES = {
    "uvit_v1": (lambda: UViT(UViTConfig.v1()), 418),
    "autoencoder_kl": (lambda: AutoencoderKL(AutoencoderConfig.v1()), 248),
    "caption_decoder": (lambda: CaptionDecoder(CaptionDecoderConfig.v1()), 153),
}


def read_keys(path) -> dict[str, tuple[list[int], str]]:
    entries = {}
    for line in path.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        entries[name] = (json.loads(shape), dtype)
    return entries


def on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_names_and_shapes(keys_dir, name):
    build, count = MODULES[name]
    expected = read_keys(keys_dir / f"{name}.keys.tsv")
    state = on_meta(build).state_dict()
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    assert len(expected) == count
    assert sorted(set(ours) - set(expected)) == [], "unexpected keys"
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}, "wrong shapes or dtypes"


def test_parameter_counts():
    assert sum(p.numel() for p in on_meta(MODULES["uvit_v1"][0]).parameters()) == 952_509_520
    assert sum(p.numel() for p in on_meta(MODULES["autoencoder_kl"][0]).parameters()) == 83_653_863
