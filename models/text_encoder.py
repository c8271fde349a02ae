"""Text path of UniDiffuser v1: CLIP ViT-L/14 text encoder + the caption decoder's encode_prefix.

    prompts --ClipTokenizer (pad to 77 with EOS, truncate)--> ids [B, 77]
            --CLIPTextModel (no attention mask; causal)--> last_hidden_state [B, 77, 768]
            --encode_prefix Linear(768 -> 64)--> UViT text input [B, 77, 64]

Everything loads from local files only (a Hugging Face folder of openai/clip-vit-large-patch14 and
`caption_decoder.pth`), with this package's own tokenizer and text transformer (models/
clip_tokenizer.py, models/clip_text.py): transformers is not imported. `write_clip_tokenizer`
builds the tokenizer files from the BPE merges that open_clip ships, so tokenisation works offline
(tests, fresh machines).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .clip_text import INDEX_FILES, WEIGHT_FILES, CLIPTextModel, load_clip_text_model
from .clip_tokenizer import BOS, EOS, ClipTokenizer, bytes_to_unicode
from .paths import WeightsError

MAX_LENGTH = 77
_WEIGHT_FILES = WEIGHT_FILES + INDEX_FILES
_GET_IT = ("Download openai/clip-vit-large-patch14 from the Hugging Face hub (config.json, vocab.json, "
           "merges.txt, tokenizer_config.json, model.safetensors or pytorch_model.bin) into that folder")


# ---- tokenizer files from open_clip's BPE ---------------------------------------------------------
def default_bpe_path() -> Path:
    """open_clip's copy of CLIP's BPE merges (bpe_simple_vocab_16e6.txt.gz)."""
    import open_clip

    return Path(open_clip.__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(folder: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> Path:
    """Write a Hugging Face CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) equal to openai/clip-vit-large-patch14's tokenizer.

    Vocabulary (49408): the 256 byte symbols, the same with '</w>', the 48894 merges in order, then
    <|startoftext|> and <|endoftext|>; pad and unk are <|endoftext|>, max length 77. Returns the folder.
    """
    folder = Path(folder)
    bpe_path = Path(bpe_path) if bpe_path else default_bpe_path()
    if not bpe_path.is_file():
        raise WeightsError(f"CLIP BPE merges file {bpe_path} not found; reinstall open_clip_torch "
                           "(it ships bpe_simple_vocab_16e6.txt.gz) or pass bpe_path")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_json = json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)
    (folder / "vocab.json").write_text(vocab_json, encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH,
              "do_lower_case": True, "add_prefix_space": False, "errors": "replace"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return folder


# ---- loading --------------------------------------------------------------------------------------
def check_clip_text_dir(folder: str | os.PathLike) -> Path:
    """Check that a CLIP text folder has a config, tokenizer files and weights; WeightsError if not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"CLIP text encoder folder {folder} does not exist (or is not a folder). "
                           f"{_GET_IT}.")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        missing.append("tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        missing.append("weights (" + " or ".join(_WEIGHT_FILES[:2]) + ")")
    if missing:
        raise WeightsError(f"CLIP text encoder folder {folder} is missing {', '.join(missing)}. {_GET_IT}.")
    return folder


def load_clip_text(folder: str | os.PathLike, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[ClipTokenizer, CLIPTextModel]:
    """(tokenizer, text model in eval mode) from a local folder, nothing fetched from the hub.

    The folder may hold the full CLIPModel (openai/clip-vit-large-patch14 as published): only the
    text tower is built and loaded.
    """
    folder = check_clip_text_dir(folder)
    try:
        tokenizer = ClipTokenizer.from_folder(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"could not read the CLIP tokenizer files in {folder}: {e}. {_GET_IT}.") from e
    try:
        model = load_clip_text_model(folder, device=device, dtype=dtype)
    except WeightsError as e:
        raise WeightsError(f"{e}\nThe folder {folder} is incomplete or holds another model. {_GET_IT}.") from e
    return tokenizer, model


class TextEncoder(nn.Module):
    """prompts -> UViT text input [B, L, text_dim] (CLIP-L last hidden state through encode_prefix:
    L = 77, text_dim = 64 for v1).

    tokenizer: a models.tokenizers.Tokenizer (CLIP's BPE for v1; the identity world's WordTokenizer);
    text_model: a models.clip_text.CLIPTextModel (width W = 768 at full size); encode_prefix:
    Linear(W -> text_dim) from `caption_decoder.pth` (the world-CLIP folder for the world);
    max_length: the context length L (default: the tokenizer's, 77 for CLIP).
    """

    def __init__(self, tokenizer, text_model: nn.Module, encode_prefix: nn.Linear,
                 max_length: int | None = None):
        max_length = max_length or getattr(tokenizer, "context_length", MAX_LENGTH)
        super().__init__()
        width = text_model.config.hidden_size
        if encode_prefix.in_features != width:
            raise ValueError(f"encode_prefix takes {encode_prefix.in_features}-d features but the CLIP text "
                             f"model gives {width}-d: the caption decoder and the text encoder do not "
                             f"belong together")
        if text_model.config.max_position_embeddings < max_length:
            raise ValueError(f"CLIP text model has {text_model.config.max_position_embeddings} positions, "
                             f"fewer than max_length={max_length}")
        self.tokenizer = tokenizer
        self.text_model = text_model
        self.encode_prefix = encode_prefix
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, clip_dir: str | os.PathLike, caption_decoder_path: str | os.PathLike, *,
                        caption_decoder_config=None, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> TextEncoder:
        """CLIP text folder + caption_decoder.pth (only its encode_prefix is read). A world-CLIP folder
        (models.world_clip) as `clip_dir` holds its own tokenizer, text tower and prefix: then
        `caption_decoder_path` and its config are not read."""
        from .caption_decoder import load_encode_prefix
        from .world_clip import is_world_clip_dir, load_world_text_encoder

        if is_world_clip_dir(clip_dir):
            return load_world_text_encoder(clip_dir, device=device, dtype=dtype)

        tokenizer, text_model = load_clip_text(clip_dir, device=device, dtype=dtype)
        prefix = load_encode_prefix(caption_decoder_path, caption_decoder_config, device=device or "cpu",
                                    dtype=dtype)
        return cls(tokenizer, text_model, prefix)

    @property
    def device(self) -> torch.device:
        return self.encode_prefix.weight.device

    @property
    def text_dim(self) -> int:
        return self.encode_prefix.out_features

    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """prompts -> ids [B, L] int64 (BOS, tokens, EOS, padding; truncated to L = max_length), on self.device."""
        return self.tokenizer(prompts, max_length=self.max_length).to(self.device)

    @torch.no_grad()
    def encode_clip(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """prompts -> CLIP last_hidden_state [B, L, W] (no attention mask, as the reference)."""
        return self.text_model(self.tokenize(prompts))

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """prompts -> UViT text input [B, L, text_dim] ([B, 77, 64] at full size)."""
        return self.encode_prefix(self.encode_clip(prompts))

    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        return self.encode(prompts)
