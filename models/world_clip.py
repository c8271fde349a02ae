"""World-CLIP: the identity world's image-text model, in the roles CLIP-L + encode_prefix and ViT-B/32 play for real.

    tokenizer, model = load_world_clip("checkpoints/world/world_clip")
    text = model.text_features(tokenizer(["a photo of a man in the snow"]))   # [B, 24, 32]: the UViT's text input
    img = model.encode_image(pixels)        # pixels [B, 3, 64, 64] in [-1, 1] -> [B, 64]: the UViT's CLIP-image input

Towers:
- text: models.clip_text.CLIPTextModel with a small config (context 24 tokens of a word-level
  tokenizer, models.tokenizers.WordTokenizer) -> hidden [B, L, W] -> `encode_prefix` Linear(W -> 32)
  = the UViT's text features [B, L, 32]. Pooled at the first <eos> (the causal transformer has read
  the whole caption there) and projected (text_projection [32, E] + bias) -> the text embedding.
- image: a small ViT with open_clip's VisionTransformer layout (`VisionTower`: class-token pooling,
  projection to E) -> the image embedding.
Both embeddings come out with norm sqrt(E) (unit RMS per dimension: the scale the UViT's CLIP-image
channel wants under the diffusion noise schedule); similarities use their cosine.

The exported prefix is standardised: over training captions every one of its 32 features has mean 0
and standard deviation 1 at every position (`standardize_prefix` folds that into encode_prefix and the
text projection, so the embeddings do not change).

Folder (what `save_world_clip` writes, `load_world_clip` reads; fp16 weights):
    config.json             {"model_type": "world_clip", WorldCLIPConfig fields}
    vocab.json, tokenizer_config.json       the word tokenizer
    model.safetensors       visual.*, text_tower.*, encode_prefix.*, text_projection(_bias), logit_scale

`ImageCLIP.from_file` (models/image_clip.py) and `TextEncoder.from_pretrained` (models/text_encoder.py)
load such a folder where they would load ViT-B/32 and CLIP-L, so scoring, data_prep and the pipeline
take the world-CLIP through their usual interfaces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import nn

from .clip_text import CLIPTextConfig, CLIPTextModel
from .config_dict import config_from_dict
from .paths import WeightsError
from .pixels import to_signed
from .tokenizers import WordTokenizer

MODEL_TYPE = "world_clip"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MEAN = STD = (0.5, 0.5, 0.5)  # images [0, 1] -> [-1, 1]


@dataclass(frozen=True)
class WorldCLIPConfig:
    image_size: int = 64
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 6
    vision_heads: int = 4
    vocab_size: int = 256  # the word tokenizer's vocabulary (set from it when training starts)
    context_length: int = 24
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_dim: int = 32  # encode_prefix output = the UViT's text_dim
    embed_dim: int = 64  # joint embedding = the UViT's clip_img_dim
    eos_token_id: int = 2  # models.tokenizers.EOS's id

    @classmethod
    def tiny(cls, vocab_size: int = 256) -> WorldCLIPConfig:
        """CPU-test size (64 x 64 images still: the renderer's size)."""
        return cls(patch_size=16, vision_width=32, vision_layers=1, vision_heads=2, vocab_size=vocab_size,
                   text_width=32, text_layers=1, text_heads=2, text_dim=8, embed_dim=16)

    @classmethod
    def from_dict(cls, d: dict) -> WorldCLIPConfig:
        return config_from_dict(cls, d, "world-CLIP", inert=("model_type",))

    def text_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=self.vocab_size, hidden_size=self.text_width,
                              intermediate_size=4 * self.text_width, num_hidden_layers=self.text_layers,
                              num_attention_heads=self.text_heads, max_position_embeddings=self.context_length)


class VisionBlock(nn.Module):
    """Pre-LayerNorm block, open_clip's ResidualAttentionBlock names: x + attn(ln_1(x)), then + mlp(ln_2(x)).
    [B, L, W] -> [B, L, W]."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.in_proj_weight = nn.Parameter(torch.randn(3 * width, width) * width**-0.5)
        self.attn.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.attn.out_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = rearrange(y, "b l (k h d) -> k b h l d", k=3, h=self.heads)
        o = rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)")
        x = x + self.attn.out_proj(o)
        return x + self.mlp(self.ln_2(x))


class VisionTower(nn.Module):
    """A ViT with open_clip's VisionTransformer state-dict names and function (class-token pooling, pre
    and post LayerNorm, GELU, a bias-free patch conv, projection `proj` [W, E]), written here so that
    loading the world does not import open_clip (tests/test_world_models.py compares the two).

    forward(pixels [B, 3, S, S]) -> [B, E]
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        self.image_size = (image_size, image_size)
        grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([VisionBlock(width, heads) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.conv1(pixels), "b w h v -> b (h v) w")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj.to(x.dtype)


class WorldCLIPModel(nn.Module):
    """Image tower + text tower + prefix + projection (see the module docstring).

    encode_image(pixels [B, 3, S, S] normalised to [-1, 1]) -> [B, E], norm sqrt(E)
    text_features(ids [B, L]) -> prefix features [B, L, text_dim]
    encode_text(ids [B, L]) -> [B, E], norm sqrt(E)
    """

    def __init__(self, config: WorldCLIPConfig):
        super().__init__()
        c = self.config = config
        self.visual = VisionTower(c.image_size, c.patch_size, c.vision_width, c.vision_layers, c.vision_heads,
                                  c.embed_dim)
        self.text_tower = CLIPTextModel(c.text_config())
        self.encode_prefix = nn.Linear(c.text_width, c.text_dim)
        self.text_projection = nn.Parameter(torch.randn(c.text_dim, c.embed_dim) / math.sqrt(c.text_dim))
        self.text_projection_bias = nn.Parameter(torch.zeros(c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) * math.sqrt(self.config.embed_dim)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._scaled(self.visual(pixels))

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode_prefix(self.text_tower(ids))

    def pool(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, text_dim] at each row's first <eos> (the last position when there is none)."""
        is_eos = ids == self.config.eos_token_id
        last = torch.full_like(ids[:, 0], ids.shape[1] - 1)
        pos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), last)
        return features[torch.arange(ids.shape[0], device=ids.device), pos]

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.text_features(ids), ids)
        return self._scaled(pooled @ self.text_projection.to(pooled.dtype) + self.text_projection_bias.to(pooled.dtype))

    @torch.no_grad()
    def standardize_prefix(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fold f' = (f - mean) / std ([text_dim] each) into encode_prefix, and f = std f' + mean into the
        text projection, so that text_features become standardised and encode_text does not change."""
        mean, std = mean.float(), std.float().clamp_min(1e-6)
        w, b = self.encode_prefix.weight, self.encode_prefix.bias
        w.copy_(w.float() / std[:, None])
        b.copy_((b.float() - mean) / std)
        p = self.text_projection.float()
        self.text_projection_bias.add_(mean @ p)
        self.text_projection.copy_(std[:, None] * p)


def is_world_clip_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a world-CLIP folder (its config.json says model_type "world_clip")."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def save_world_clip(model: WorldCLIPModel, tokenizer: WordTokenizer, folder: str | os.PathLike,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write the folder (config, tokenizer, weights in `dtype`); each file atomically."""
    from .weights import atomic_write, save_state_dict

    folder = Path(folder)
    if tokenizer.context_length != model.config.context_length or len(tokenizer) != model.config.vocab_size:
        raise ValueError("tokenizer and world-CLIP config disagree on context length or vocabulary size")
    tokenizer.save(folder)
    save_state_dict({k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}, folder / WEIGHTS)
    text = json.dumps({"model_type": MODEL_TYPE, **dataclasses.asdict(model.config)}, indent=1)
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return folder


def load_world_clip(folder: str | os.PathLike, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[WordTokenizer, WorldCLIPModel]:
    """(tokenizer, frozen model) from a world-CLIP folder; WeightsError when it is incomplete or mismatched."""
    from .weights import build_on_meta, load_strict, read_state_dict

    folder = Path(folder)
    if not is_world_clip_dir(folder):
        raise WeightsError(f"{folder} is not a world-CLIP folder (no config.json with model_type "
                           f"{MODEL_TYPE!r}); train it with `python -m pretrain.world train clip`")
    try:
        config = WorldCLIPConfig.from_dict(json.loads((folder / CONFIG).read_text()))
        tokenizer = WordTokenizer.from_folder(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"world-CLIP folder {folder}: unreadable config or tokenizer ({e})") from e
    if tokenizer.context_length != config.context_length or len(tokenizer) != config.vocab_size:
        raise WeightsError(f"world-CLIP folder {folder}: the tokenizer ({len(tokenizer)} words, context "
                           f"{tokenizer.context_length}) does not match config.json ({config.vocab_size}, "
                           f"{config.context_length})")
    state_dict = read_state_dict(folder / WEIGHTS, "world-CLIP")
    model = build_on_meta(lambda: WorldCLIPModel(config))
    load_strict(model, state_dict, folder / WEIGHTS, "world-CLIP", dtype=dtype, device=device)
    return tokenizer, model.to(device).eval().requires_grad_(False)


def load_world_text_encoder(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                            dtype: torch.dtype | None = None):
    """models.text_encoder.TextEncoder over the world-CLIP's word tokenizer, text tower and prefix."""
    from .text_encoder import TextEncoder

    tokenizer, model = load_world_clip(folder, device=device or "cpu", dtype=dtype)
    return TextEncoder(tokenizer, model.text_tower, model.encode_prefix, max_length=tokenizer.context_length)


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image (any mode) -> [3, size, size] float32 in [-1, 1]: shortest side resized to `size`
    (bicubic), centre crop (open_clip's inference transform with the world's mean and std)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return to_signed(x)


def load_world_image_clip(folder: str | os.PathLike, device: torch.device | str | None = None):
    """models.image_clip.ImageCLIP over the world-CLIP (embed_images / embed_texts as for ViT-B/32)."""
    from .image_clip import ImageCLIP

    tokenizer, model = load_world_clip(folder, device="cpu", dtype=torch.float32)
    size = model.config.image_size
    return ImageCLIP(model, lambda image: preprocess_image(image, size), tokenizer, mean=MEAN, std=STD).to(device)
