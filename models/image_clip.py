"""OpenAI CLIP ViT-B/32 through open_clip: UniDiffuser's image-CLIP variable and the scorer's CLIP.

`embed_images` gives the projected 512-d image embedding, NOT normalised (UniDiffuser's image-CLIP
token [B, 1, 512] is this vector); `embed_texts` gives the projected text embedding (for the
competition's image-text score, which normalises both). Weights come from a local file only:
OpenAI's TorchScript archive (`ViT-B-32.pt`), or a state dict (.pt/.bin/.pth/.safetensors, e.g.
open_clip's 'openai' file). OpenAI's models use QuickGELU, which open_clip only switches on for its
own 'openai' tag, so a local file needs `force_quick_gelu=True` (done here).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .paths import WeightsError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_GET_IT = ("Get OpenAI's ViT-B-32.pt (the `clip` package's download) or open_clip's ViT-B-32 'openai' "
           "weights file and pass its path (or put it in the weights folder as ViT-B-32.pt)")


def _is_torchscript(path: Path) -> bool:
    """OpenAI's release files are TorchScript archives (a zip holding constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") for name in zf.namelist())


def _torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Parameters of an OpenAI TorchScript CLIP archive, without its non-weight attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, the files are not
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        sd.pop(key, None)
    return sd


class ImageCLIP(nn.Module):
    """A CLIP model with its inference preprocessing.

    model: an open_clip CLIP; preprocess: PIL image -> [3, S, S] normalised tensor;
    tokenizer: list[str] -> ids [B, context_length] (defaults to open_clip's CLIP tokenizer).
    """

    def __init__(self, model: nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
                 mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.tokenizer = tokenizer
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: torch.device | str | None = None, *,
                  model_name: str = "ViT-B-32", model_cfg: dict | None = None,
                  quick_gelu: bool = True) -> ImageCLIP:
        """Load local weights into open_clip's `model_name` (or a CLIP built from `model_cfg`,
        open_clip.model.CLIP keyword arguments, for tests). A world-CLIP folder (models.world_clip)
        loads as the identity world's image-text model. Nothing is downloaded."""
        import open_clip

        path = Path(path).expanduser()
        from .world_clip import is_world_clip_dir, load_world_image_clip

        if is_world_clip_dir(path):  # the identity world's image-text model
            return load_world_image_clip(path, device)
        if not path.is_file():
            raise WeightsError(f"image CLIP weights {path} not found. {_GET_IT}.")
        torchscript = _is_torchscript(path)
        try:
            if model_cfg is not None:
                model = open_clip.model.CLIP(**{"quick_gelu": quick_gelu, **model_cfg})
                preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
                if torchscript:
                    model.load_state_dict(_torchscript_state_dict(path))
                else:
                    open_clip.load_checkpoint(model, str(path))
            elif torchscript:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=None, force_quick_gelu=quick_gelu)
                model.load_state_dict(_torchscript_state_dict(path))
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), force_quick_gelu=quick_gelu)
        except (RuntimeError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise WeightsError(f"could not load image CLIP weights {path} into open_clip {model_name}: {e}. "
                               f"{_GET_IT}.") from e
        return cls(model, preprocess).to(device)

    @classmethod
    def from_pretrained(cls, root: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None,
                        device: torch.device | str | None = None) -> ImageCLIP:
        """From the weights folder (`ViT-B-32.pt` there or under models/; `path` wins). A
        `model_configs.json` there with a "clip_image" entry (open_clip.model.CLIP keyword
        arguments) replaces ViT-B/32's config: how the tiny test stack is loaded."""
        from .paths import find_weights, read_model_configs

        return cls.from_file(find_weights("clip_image", path, root), device,
                             model_cfg=read_model_configs(root).get("clip_image"))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1]

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] float in [0, 1] (or uint8) -> normalised [B, 3, S, S]: shortest side resized to
        S (bicubic, antialiased), centre crop, OpenAI mean/std. Close to, not bit-equal with, the PIL path."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        h, w = x.shape[-2:]
        th, tw = self.image_size
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw]
        return (x.to(self.mean.device) - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image] | torch.Tensor,
                     batch_size: int = 64) -> torch.Tensor:
        """PIL images (any mode) or a tensor [B, 3, H, W] in [0, 1] -> projected embeddings [B, D]
        (D = 512 for ViT-B/32), float32, not normalised."""
        if torch.is_tensor(images):
            pixels = self.preprocess_tensor(images)
        else:
            if len(images) == 0:
                raise ValueError("embed_images got no images")
            pixels = torch.stack([self.preprocess(img) for img in images])
        dtype = next(self.model.parameters()).dtype
        out = [self.model.encode_image(chunk.to(self.device, dtype)).float()
               for chunk in pixels.split(batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> projected text embeddings [B, D], float32, not normalised."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = self.tokenizer(texts)
        out = [self.model.encode_text(chunk.to(self.device)).float() for chunk in ids.split(batch_size)]
        return torch.cat(out)
