"""A tiny identity-world weights folder for tests: random weights, the layout the world stages export.

    root/model_configs.json                 uvit (pixel space, 3 channels of 64 x 64) + autoencoder (pixel_space)
    root/models/uvit_v1.safetensors         root/models/pixel_space.safetensors
    root/world_clip/                        config.json, vocab.json, tokenizer_config.json, model.safetensors
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from models.pixel_space import PixelSpace, PixelSpaceConfig
from models.tokenizers import WordTokenizer
from models.uvit import UViT, UViTConfig
from models.weights import save_state_dict
from models.world_clip import WorldCLIPConfig, WorldCLIPModel, save_world_clip

WORDS = ("a", "photo", "painting", "of", "man", "woman", "wearing", "red", "hat", "sunglasses", "in", "the",
         "snow", "smiling")


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_world_uvit_config(clip: WorldCLIPConfig) -> UViTConfig:
    return UViTConfig(img_size=64, in_chans=3, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                      text_dim=clip.text_dim, num_text_tokens=clip.context_length, clip_img_dim=clip.embed_dim)


def make_tiny_world(root: str | Path, seed: int = 0, pixel: PixelSpaceConfig | None = None) -> Path:
    """A random tiny world folder; `pixel`: its pixel space's config (default: one gain, 1)."""
    root = Path(root)
    tokenizer = WordTokenizer.build(WORDS, context_length=24)
    clip_config = WorldCLIPConfig.tiny(len(tokenizer))
    with _seeded(seed):
        clip = WorldCLIPModel(clip_config)
        uvit = UViT(tiny_world_uvit_config(clip_config))
        for p in uvit.parameters():  # no zero-initialised tensors: a less trivial model
            if not p.any():
                p.data.normal_(0.0, 0.02)
    save_world_clip(clip, tokenizer, root / "world_clip")
    save_state_dict({k: v.half() for k, v in uvit.state_dict().items()}, root / "models" / "uvit_v1.safetensors")
    pixel = PixelSpace(pixel)
    save_state_dict(pixel.state_dict(), root / "models" / "pixel_space.safetensors")
    configs = {"uvit": dataclasses.asdict(uvit.config), "autoencoder": dataclasses.asdict(pixel.config)}
    (root / "model_configs.json").write_text(json.dumps(configs, indent=1))
    return root
