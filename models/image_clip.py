"""OpenAI CLIP ViT-B/32 through open_clip: UniDiffuser's image-CLIP variable and the scorer's CLIP.

`embed_images` gives the projected 512-d image embedding, NOT normalised (UniDiffuser's image-CLIP
token [B, 1, 512] is this vector); `embed_texts` gives the projected text embedding (for the
competition's image-text score, which normalises both). Weights come from a local file only:
OpenAI's TorchScript archive (`ViT-B-32.pt`, whose weights are read as data, without running the
archive's code), or a state dict (.pt/.bin/.pth/.safetensors, e.g. open_clip's 'openai' file, read
with weights_only). OpenAI's models use QuickGELU, which open_clip only switches on for its
own 'openai' tag, so a local file needs `force_quick_gelu=True` (done here).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .paths import WeightsError
from .weights import check_weight_file

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


# ------------------------------------------------------------------- TorchScript archives, read as data
# A TorchScript archive runs its code/ when torch.jit.load builds the module. Its weights are plain
# records, though: data.pkl pickles the module tree (objects of TorchScript classes holding their
# attributes), and each tensor's bytes are the record data/<key>. They are read here with an unpickler
# that builds nothing but placeholders, tensors and ordered dicts, so a file cannot run code on load.
OPENAI_VIT_B_32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class ArchiveRefused(pickle.UnpicklingError):
    """The archive's data.pkl asks for something a weights file has no need of (it could run code)."""


class _ScriptObject:
    """What a TorchScript object of data.pkl becomes: its attributes, nothing of its class."""

    def __setstate__(self, state) -> None:
        self.attributes = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _same(value, *_):
    return value


class _WeightsUnpickler(pickle.Unpickler):
    """data.pkl of a TorchScript archive -> its object tree; tensors read from the archive's data/ records."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _same,
                ("collections", "OrderedDict"): collections.OrderedDict,
                ("torch.jit._pickle", "build_intlist"): _same, ("torch.jit._pickle", "build_doublelist"): _same,
                ("torch.jit._pickle", "build_boollist"): _same, ("torch.jit._pickle", "build_tensorlist"): _same,
                ("torch.jit._pickle", "restore_type_tag"): _same}

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.storages = zf, prefix, {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise ArchiveRefused(f"{module}.{name}")

    def persistent_load(self, pid) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise ArchiveRefused(f"persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() < numel:
                raise ValueError(f"tensor record data/{key} holds {flat.numel()} of {numel} values")
            self.storages[key] = flat
        return self.storages[key]


def _torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree by dotted name (weights, and
    attributes such as attention masks), read without running the archive. ArchiveRefused for an
    archive that asks for anything else; OSError, ValueError, KeyError, RuntimeError, EOFError or
    pickle.UnpicklingError for a damaged one."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(names) != 1:
            raise ValueError("no data.pkl at the top of the archive")
        prefix = names[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise ValueError("a big-endian archive")
        root = _WeightsUnpickler(zf.read(names[0]), zf, prefix).load()
    tensors: dict[str, torch.Tensor] = {}
    todo, seen = [("", root)], set()
    while todo:
        prefix, obj = todo.pop()
        attributes = getattr(obj, "attributes", None) if isinstance(obj, _ScriptObject) else None
        if not isinstance(attributes, dict) or id(obj) in seen:
            continue
        seen.add(id(obj))
        for name, value in attributes.items():
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                todo.append((f"{prefix}{name}.", value))
    return tensors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_torchscript_weights(model: nn.Module, path: Path) -> None:
    """The weights of a TorchScript CLIP archive into `model`, strictly: each of the model's weights must
    be there with its shape; the archive's other tensors (attention masks, input_resolution, ...) are
    no weights and are left out."""
    tensors, weights = _read_torchscript_tensors(path), model.state_dict()
    model.load_state_dict({k: v for k, v in tensors.items() if k in weights})


def _read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """_torchscript_tensors; for an archive it refuses, torch.jit.load only when the file is OpenAI's
    release (its SHA-256 checked first), else WeightsError."""
    try:
        return _torchscript_tensors(path)
    except ArchiveRefused as e:
        if _sha256(path) != OPENAI_VIT_B_32_SHA256:
            raise WeightsError(f"{path} is a TorchScript archive that asks to run code ({e}) and is not OpenAI's "
                               f"ViT-B-32.pt (SHA-256 {OPENAI_VIT_B_32_SHA256[:12]}...): not loaded. "
                               f"{_GET_IT}.") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, the files are not
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


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
        path = Path(path).expanduser()
        from .world_clip import is_world_clip_dir, load_world_image_clip

        if is_world_clip_dir(path):  # the identity world's image-text model
            return load_world_image_clip(path, device)
        if not path.exists():
            raise WeightsError(f"image CLIP weights {path} not found. {_GET_IT}.")
        check_weight_file(path, "image CLIP weights")  # a folder, an empty file, a Git LFS pointer, text
        import open_clip

        try:
            torchscript = _is_torchscript(path)
            if model_cfg is not None:
                model = open_clip.model.CLIP(**{"quick_gelu": quick_gelu, **model_cfg})
                preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
                if torchscript:
                    _load_torchscript_weights(model, path)
                else:
                    open_clip.load_checkpoint(model, str(path))
            elif torchscript:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=None, force_quick_gelu=quick_gelu)
                _load_torchscript_weights(model, path)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), force_quick_gelu=quick_gelu)
        except WeightsError:
            raise
        except (RuntimeError, KeyError, ValueError, OSError, EOFError, AssertionError, pickle.UnpicklingError,
                zipfile.BadZipFile, IndexError, TypeError, struct.error) as e:
            # what torch.load and open_clip raise for damaged or other files (garbage bytes reach torch's
            # unpickler as opcodes: an empty stack's IndexError, a wrong argument's TypeError)
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # its first sentence
            raise WeightsError(f"could not load image CLIP weights {path} into open_clip {model_name} "
                               f"({type(e).__name__}: {detail}); the file is damaged (an interrupted download?) "
                               f"or another model's. {_GET_IT}.") from e
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
