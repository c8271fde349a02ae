"""Text tokenizers behind one interface: CLIP's BPE (the real stack) and a word-level one (the identity world).

    tok = load_tokenizer("checkpoints/world/world_clip")     # chosen by the folder's tokenizer_config.json
    ids = tok(["a photo of a man"], max_length=tok.context_length)    # LongTensor [B, L]

A tokenizer maps prompts to ids [B, max_length] int64 (BOS, tokens truncated to max_length - 2, EOS,
padding) and says its `context_length` (77 for CLIP-L; the world's is 24) and `eos_id`.

WordTokenizer: lower-cased words of the grammar's vocabulary. Text is Unicode NFC, lower case, split
into words (letters and digits, with inner hyphens or apostrophes: "t-shirt"); punctuation and other
symbols are dropped, and a word outside the vocabulary becomes <unk>. Ids 0-3 are <pad>, <bos>, <eos>, <unk>; padding
is <pad> (the text transformer is causal, so padding never changes the features before it). Files:
vocab.json ({token: id}) and tokenizer_config.json ({"tokenizer_class": "WordTokenizer",
"model_max_length": L}).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import regex
import torch

from .clip_tokenizer import ClipTokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
WORD_TOKENIZER = "WordTokenizer"
TOKENIZER_CONFIG = "tokenizer_config.json"
CLIP_CONTEXT = 77
_WORDS = regex.compile(r"[\p{L}\p{N}]+(?:['\-][\p{L}\p{N}]+)*")


class Tokenizer(Protocol):
    """What the text encoder needs of a tokenizer."""

    context_length: int
    eos_id: int

    def __call__(self, prompts: str | Sequence[str], max_length: int = ...) -> torch.Tensor:
        """prompts -> ids [B, max_length] int64."""
        ...

    def dropped(self, text: str, max_length: int = ...) -> str:
        """The end of `text` cut off to fit max_length ("" when it fits), for warnings."""
        ...


def split_words(text: str) -> list[str]:
    """NFC, lower case, then the words in order (punctuation dropped)."""
    return _WORDS.findall(unicodedata.normalize("NFC", text).lower())


class WordTokenizer:
    """vocab: {token: id} holding the four special tokens; context_length: the text model's positions."""

    def __init__(self, vocab: dict[str, int], context_length: int):
        missing = [s for s in SPECIALS if s not in vocab]
        if missing:
            raise ValueError(f"word vocabulary lacks the special tokens {missing}")
        if len(set(vocab.values())) != len(vocab):
            raise ValueError("word vocabulary has two tokens with one id")
        if context_length < 3:
            raise ValueError(f"context_length {context_length} leaves no room for a word")
        self.vocab = dict(vocab)
        self.words = {i: w for w, i in self.vocab.items()}
        self.context_length = context_length
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.vocab[s] for s in SPECIALS)

    @classmethod
    def build(cls, words: Iterable[str], context_length: int) -> WordTokenizer:
        """A vocabulary of the special tokens, then the given words (lower-cased, sorted, de-duplicated)."""
        extra = sorted({w.lower() for w in words} - set(SPECIALS))
        bad = [w for w in extra if split_words(w) != [w]]
        if bad:
            raise ValueError(f"not single words: {bad[:5]}")
        return cls({tok: i for i, tok in enumerate([*SPECIALS, *extra])}, context_length)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> WordTokenizer:
        folder = Path(folder)
        config = json.loads((folder / TOKENIZER_CONFIG).read_text())
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab, int(config["model_max_length"]))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write vocab.json and tokenizer_config.json into `folder`."""
        from .atomic import atomic_write

        folder = Path(folder)
        config = {"tokenizer_class": WORD_TOKENIZER, "model_max_length": self.context_length,
                  "do_lower_case": True, "pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
        for name, obj in (("vocab.json", self.vocab), (TOKENIZER_CONFIG, config)):
            text = json.dumps(obj, indent=1, ensure_ascii=False)
            atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        return folder

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """One text -> word ids without BOS/EOS (unknown words -> <unk>)."""
        return [self.vocab.get(w, self.unk_id) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> the words joined by spaces (<pad>, <bos> and <eos> dropped, <unk> kept)."""
        return " ".join(self.words[int(i)] for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id))

    def dropped(self, text: str, max_length: int | None = None) -> str:
        """The words of `text` that `__call__` cuts off to fit max_length - 2 (BOS, EOS; "" when it fits)."""
        keep = (max_length or self.context_length) - 2
        words = split_words(text)
        return " ".join(words[keep:]) if len(words) > keep else ""

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in split_words(text) if w not in self.vocab]

    def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """prompts -> ids [B, max_length] int64 (default context_length): BOS, words, EOS, <pad>."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = max_length or self.context_length
        out = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(prompts):
            ids = [self.bos_id, *self.encode(text)[:length - 2], self.eos_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out


def tokenizer_class(folder: str | os.PathLike) -> str:
    """The folder's tokenizer_config.json tokenizer_class ("CLIPTokenizer" when there is none)."""
    path = Path(folder) / TOKENIZER_CONFIG
    if not path.is_file():
        return "CLIPTokenizer"
    return str(json.loads(path.read_text()).get("tokenizer_class", "CLIPTokenizer"))


def load_tokenizer(folder: str | os.PathLike) -> ClipTokenizer | WordTokenizer:
    """The tokenizer a text-encoder folder names: a WordTokenizer when its tokenizer_config.json says
    so, else CLIP's BPE (context length 77, as UniDiffuser uses it)."""
    if tokenizer_class(folder) == WORD_TOKENIZER:
        return WordTokenizer.from_folder(folder)
    return ClipTokenizer.from_folder(folder)
