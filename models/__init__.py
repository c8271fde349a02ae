"""The frozen UniDiffuser v1 backbone: checkpoint-compatible modules and their loaders.

    from models import load_uvit, load_autoencoder
    uvit = load_uvit("checkpoints/uvit_v1.pth", device="cuda", dtype=torch.float16)
    img_out, clip_img_out, text_out = uvit(img, clip_img, text, t_img, t_text, data_type)

Every loader reads local files only (torch.load weights_only=True or safetensors), builds the
module on the meta device and assigns the file's tensors (no second copy in memory), and returns
it in eval mode with requires_grad False. A missing, unreadable or mismatched file raises
WeightsError naming the file, the offending keys and what to do. Importing this package does not
import transformers.
"""

from __future__ import annotations

import os

import torch

from .autoencoder import AutoencoderConfig, AutoencoderKL, load_autoencoder
from .caption_decoder import CaptionDecoder, CaptionDecoderConfig, load_caption_decoder, load_encode_prefix
from .paths import WeightsError, find_weights
from .uvit import UViT, UViTConfig
from .weights import as_config, load_frozen

__all__ = [
    "AutoencoderConfig", "AutoencoderKL", "CaptionDecoder", "CaptionDecoderConfig", "UViT", "UViTConfig",
    "WeightsError", "load_autoencoder", "load_caption_decoder", "load_encode_prefix", "load_uvit",
]


def load_uvit(path: str | os.PathLike | None = None, config: UViTConfig | dict | None = None, *,
              device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> UViT:
    """Frozen UViT (eval, no grad) from `uvit_v1.pth` or a .safetensors file.

    path None: looked up in the weights folder (models.paths). config None: v1; a dict with the
    reference constructor's keyword names (as `tests/reference/golden/uvit_tiny.config.json`); or a
    UViTConfig. dtype None keeps the file's dtype. Call it as the reference:
    uvit(img, clip_img, text, t_img, t_text, data_type) -> (img_out, clip_img_out, text_out).
    """
    config = as_config(config, UViTConfig)
    path = find_weights("uvit") if path is None else path
    return load_frozen(lambda: UViT(config), path, "UViT (uvit_v1.pth)", device=device, dtype=dtype)
