"""CLIP's text transformer (ViT-L/14's: width 768, 12 layers, 12 heads), without transformers.

    model = load_clip_text_model("models/clip-vit-large-patch14", device="cuda", dtype=torch.bfloat16)
    hidden = model(ids)                      # ids [B, 77] -> last hidden state [B, 77, 768]

State-dict names are the Hugging Face CLIPModel's (`text_model.embeddings...`), so the published
folder (config.json + model.safetensors or pytorch_model.bin) loads as is, and so does a text tower
saved alone (names without `text_model.`); the vision tower's tensors are skipped. The function is
transformers' CLIPTextModel(input_ids).last_hidden_state with no attention mask, as UniDiffuser
calls it: token + position embeddings, pre-LayerNorm blocks with causal self-attention and a
quick-GELU MLP, a final LayerNorm (tests/test_text_encoder.py compares the two).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .paths import WeightsError
from .weights import build_on_meta, load_strict, read_state_dict


@dataclass(frozen=True)
class CLIPTextConfig:
    """Field names and defaults are transformers' CLIPTextConfig's (so config.json reads as is)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_json(cls, d: dict) -> CLIPTextConfig:
        """From a CLIPTextModel config.json, or a CLIPModel one (its `text_config`)."""
        d = d.get("text_config", d)
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in names})
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"CLIP text hidden_act {config.hidden_act!r} is not supported "
                             f"(known: {sorted(_ACTIVATIONS)})")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not divisible by "
                             f"num_attention_heads {config.num_attention_heads}")
        return config


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class Embeddings(nn.Module):
    """ids [B, L] -> token + position embeddings [B, L, W]."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Embedding(c.max_position_embeddings, c.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention. [B, L, W] -> [B, L, W]."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(c.hidden_size, c.hidden_size)
                                                               for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(f(x), "b l (h d) -> b h l d", h=self.num_heads) for f in (self.q_proj, self.k_proj,
                                                                                       self.v_proj))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(rearrange(o, "b h l d -> b l (h d)"))


class Mlp(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.act = _ACTIVATIONS[c.hidden_act]
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.self_attn = SelfAttention(c)
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = Mlp(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TextTransformer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(ids)))


class CLIPTextModel(nn.Module):
    """forward(ids [B, L] int64, L <= max_position_embeddings) -> last hidden state [B, L, W]."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens, but the CLIP text model has "
                             f"{self.config.max_position_embeddings} positions")
        return self.text_model(ids)


# ---- loading --------------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOWER = ("embeddings", "encoder", "final_layer_norm")  # the text tower's top-level names
# a CLIPModel folder also holds these; a CLIPTextModel may carry the position_ids buffer
_IGNORED = (r"^vision_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$",
            r"position_ids$")


def _read_folder_tensors(folder: Path, meta: bool = False) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of the folder's weights (one file, or the shards an index names); meta: shapes only."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name, "CLIP text encoder", meta=meta), folder / name
    for name in INDEX_FILES:
        if (folder / name).is_file():
            index = json.loads((folder / name).read_text())
            shards = sorted(set(index.get("weight_map", {}).values()))
            if not shards:
                raise WeightsError(f"CLIP text encoder index {folder / name} names no weight files")
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(read_state_dict(folder / shard, "CLIP text encoder shard", meta=meta))
            return tensors, folder / name
    raise WeightsError(f"CLIP text encoder folder {folder} has no weights ({' or '.join(WEIGHT_FILES)})")


def load_clip_text_model(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> CLIPTextModel:
    """The text tower of a Hugging Face CLIP folder, frozen (eval, no grad); every key and shape
    checked (WeightsError naming them otherwise). device "meta": that check alone, no tensor data read."""
    folder = Path(folder)
    try:
        config = CLIPTextConfig.from_json(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"CLIP text encoder config {folder / 'config.json'} is unreadable: {e}") from e
    tensors, path = _read_folder_tensors(folder, meta=device is not None and torch.device(device).type == "meta")
    if not any(k.startswith("text_model.") for k in tensors):  # a text tower saved on its own
        tensors = {f"text_model.{k}" if k.split(".")[0] in _TOWER else k: v for k, v in tensors.items()}
    model = build_on_meta(lambda: CLIPTextModel(config))
    load_strict(model, tensors, path, "CLIP text encoder", ignore=_IGNORED, dtype=dtype, device=device or "cpu")
    return model.eval().requires_grad_(False)
