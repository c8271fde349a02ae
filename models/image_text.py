"""The image-text model behind CLIP-I and CLIP-T: one interface, whatever the weights folder holds.

    model = load_image_text_model(root="checkpoints/world")       # or path="ViT-B-32.pt"
    img = model.embed_images(pil_images)        # [N, D]   (or a tensor [N, 3, H, W] in [0, 1])
    txt = model.embed_texts(["a photo of a man"])   # [N, D]

Embeddings are float32 and not normalised (users take cosines). Two implementations, both
models.image_clip.ImageCLIP: OpenAI's CLIP ViT-B/32 through open_clip (the competition's scorer, D =
512), and the identity world's world-CLIP (models/world_clip.py, D = its embed_dim), which
`ImageCLIP.from_file` loads from a world-CLIP folder. The scorer (eval/competition_scorer.py), the
CLIP text fidelity stand-in and the world's evaluation take their model through this interface, so
any object with these two methods (a stand-in in tests) serves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class ImageTextModel(Protocol):
    """embed_images: PIL images (or [N, 3, H, W] in [0, 1]) -> [N, D]; embed_texts: prompts -> [N, D]."""

    def embed_images(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def load_image_text_model(path: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                          device: torch.device | str | None = None) -> tuple[ImageTextModel, Path]:
    """The image-text model of a weights folder: `path` (a ViT-B/32 file or a world-CLIP folder) when
    given, else the folder's `ViT-B-32.pt` or, in the identity world's folder, `world_clip/`.
    Returns (model, the file or folder loaded); WeightsError naming what is missing otherwise."""
    from .image_clip import ImageCLIP
    from .paths import find_weights

    found = find_weights("clip_image", path, root=root)
    return ImageCLIP.from_file(found, device=device), found
