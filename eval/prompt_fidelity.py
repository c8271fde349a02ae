"""Prompt fidelity for the final round: ImageReward when its weights are here, else a labelled stand-in.

The final round scored prompt fidelity with ImageReward v1.0 (THUDM). Its package (`image-reward`)
is optional here and imported only when asked for; its weights are never downloaded. A folder with
``ImageReward.pt`` and ``med_config.json`` (default: ``<weights>/ImageReward/``) is needed, and
ImageReward's BLIP text side loads the ``bert-base-uncased`` tokenizer through transformers, which
must already be in the local Hugging Face cache (set ``HF_HUB_OFFLINE=1`` to make sure nothing is
fetched). When any of that is missing, `load_prompt_fidelity` says "ImageReward unavailable: <why>"
and, if the caller allows it, falls back to the CLIP text score, labelled as such: it is not the
competition's measure and its bounds are the ``*_text_sim`` ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from eval.competition_scorer import read_image
from models.errors import UserError
from models.image_text import ImageTextModel

logger = logging.getLogger(__name__)

IMAGE_REWARD_DIR = "ImageReward"
IMAGE_REWARD_FILES = ("ImageReward.pt", "med_config.json")


class PromptFidelity(Protocol):
    name: str  # "image_reward", "clip_text", ...: selects the bounds' keys
    label: str  # what to print beside the numbers

    def __call__(self, prompt: str, images: Sequence[str | os.PathLike]) -> list[float]:
        """One score per image file (readable images only; the caller screens out the others)."""
        ...


class ImageRewardUnavailable(UserError, RuntimeError):
    """ImageReward cannot be used here; ``reason`` says why and what to do."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"ImageReward unavailable: {reason}")


def find_image_reward(path: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path:
    """The folder holding ImageReward.pt and med_config.json; raises ImageRewardUnavailable."""
    from models.paths import weights_dir

    folder = Path(path).expanduser() if path else weights_dir(root) / IMAGE_REWARD_DIR
    missing = [f for f in IMAGE_REWARD_FILES if not (folder / f).is_file()]
    if missing:
        raise ImageRewardUnavailable(
            f"{', '.join(str(folder / f) for f in missing)} not found. Put THUDM/ImageReward's ImageReward.pt and "
            f"med_config.json in {folder} (or pass its path); the bert-base-uncased tokenizer must be in the local "
            "Hugging Face cache")
    return folder


class ImageRewardFidelity:
    """ImageReward v1.0 reward of (prompt, image), one float per image (higher = better)."""

    name = "image_reward"
    label = "ImageReward v1.0"

    def __init__(self, model: Any):
        self.model = model

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> ImageRewardFidelity:
        folder = Path(folder)
        try:
            from ImageReward.ImageReward import ImageReward as _ImageRewardModel
        except ImportError as e:
            raise ImageRewardUnavailable(f"the image-reward package is not installed or does not import ({e}); "
                                         "pip install image-reward") from e
        weights, med_config = folder / IMAGE_REWARD_FILES[0], folder / IMAGE_REWARD_FILES[1]
        try:
            model = _ImageRewardModel(med_config=str(med_config), device=str(device))
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, _ = model.load_state_dict(state, strict=False)
        except Exception as e:  # tokenizer not cached, damaged file, incompatible package version
            raise ImageRewardUnavailable(f"could not build ImageReward from {folder}: {type(e).__name__}: {e}") from e
        if len(missing) > len(model.state_dict()) // 2:
            raise ImageRewardUnavailable(f"{weights} lacks {len(missing)} of the model's weights (e.g. "
                                         f"{missing[:3]}): not an ImageReward v1.0 checkpoint")
        if missing:
            logger.warning("ImageReward: %d weights not in %s (e.g. %s)", len(missing), weights, missing[:3])
        return cls(model.to(device).eval())

    @torch.no_grad()
    def __call__(self, prompt: str, images: Sequence[str | os.PathLike]) -> list[float]:
        return [float(self.model.score(prompt, str(path))) for path in images]


class ClipTextFidelity:
    """max(0, cos(CLIP image, CLIP text)): the stand-in when ImageReward is unavailable."""

    name = "clip_text"
    label = "CLIP ViT-B/32 text score (stand-in for ImageReward, not the competition's measure)"

    def __init__(self, clip: ImageTextModel):
        self.clip = clip

    def __call__(self, prompt: str, images: Sequence[str | os.PathLike]) -> list[float]:
        if not images:
            return []
        img = self.clip.embed_images([read_image(p) for p in images]).double()
        txt = self.clip.embed_texts([prompt]).double()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return [max(0.0, float(v)) for v in np.asarray((img @ txt.T)[:, 0])]


def load_prompt_fidelity(kind: str = "auto", *, image_reward: str | os.PathLike | None = None,
                         weights_root: str | os.PathLike | None = None, clip: Any = None,
                         device: str | torch.device = "cpu") -> tuple[PromptFidelity, str | None]:
    """kind: "image_reward" (required: errors when unavailable), "clip_text", or "auto" (ImageReward
    if it loads, else the CLIP text score). Returns (fidelity, note); note says why ImageReward was
    not used, or None."""
    if kind not in ("auto", "image_reward", "clip_text"):
        raise ValueError(f"prompt fidelity must be auto, image_reward or clip_text, got {kind!r}")
    if kind in ("auto", "image_reward"):
        try:
            return ImageRewardFidelity.from_folder(find_image_reward(image_reward, weights_root), device), None
        except ImageRewardUnavailable as e:
            if kind == "image_reward" or clip is None:
                raise
            return ClipTextFidelity(clip), f"{e}; prompt fidelity is the CLIP text score instead"
    if clip is None:
        raise ValueError("the clip_text prompt fidelity needs a CLIP model")
    return ClipTextFidelity(clip), "prompt fidelity is the CLIP text score (asked for), not ImageReward"
