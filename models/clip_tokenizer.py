"""CLIP's byte-level BPE tokenizer, read from a Hugging Face CLIP folder, without transformers.

    tok = ClipTokenizer.from_folder("models/clip-vit-large-patch14")
    ids = tok(["a photo of a boy"], max_length=77)     # LongTensor [B, 77]

Gives the ids of transformers' CLIPTokenizer for openai/clip-vit-large-patch14 (tests compare them):
- text: Unicode NFC, every whitespace run -> one space, lower case; the literal special tokens
  <|startoftext|> and <|endoftext|> are kept as themselves;
- pieces: CLIP's pattern ('s 't 're 've 'm 'll 'd, letter runs, single digits, runs of other
  non-space characters), each piece's UTF-8 bytes mapped to printable symbols;
- BPE inside each piece with '</w>' on its last symbol, merges applied by rank;
- <|startoftext|> + up to max_length - 2 tokens + <|endoftext|>, padded with <|endoftext|>.

Importing transformers costs more than loading every weight file (docs/performance.md, "sample.py,
process start to last image"); this file lets sampling start without it.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import regex
import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_PIECES = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                        r"|[^\s\p{L}\p{N}]+")
_SPECIAL = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WHITESPACE = regex.compile(r"\s+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character map (every byte gets a visible symbol).

    Insertion order matters (it is the vocabulary order): the printable bytes first, mapped to
    themselves, then the remaining bytes in increasing order, mapped to chr(256), chr(257), ...
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + len(mapping) - len(keep))
    return mapping


class ClipTokenizer:
    """vocab: {token: id}; merges: [(left, right)] in rank order."""

    context_length = 77  # CLIP-L's positions (models.tokenizers.Tokenizer)

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]):
        for special in (BOS, EOS):
            if special not in vocab:
                raise ValueError(f"CLIP vocabulary lacks {special}")
        self.vocab = vocab
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.pad_id = self.eos_id
        self._byte_symbol = bytes_to_unicode()
        self._bpe = lru_cache(maxsize=65536)(self._bpe_uncached)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """From vocab.json + merges.txt, or else tokenizer.json (its BPE model's vocab and merges)."""
        folder = Path(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        else:
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"malformed BPE merges in {folder}: {bad[:3]}")
        return cls(vocab, merges)

    def __len__(self) -> int:
        return len(self.vocab)

    def _bpe_uncached(self, piece: str) -> tuple[int, ...]:
        """One pre-tokenised piece (byte symbols) -> token ids."""
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(self.ranks.get((a, b), len(self.ranks)), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, _ = min(pairs)
            if rank == len(self.ranks):
                break
            first, second = next((word[i], word[i + 1]) for r, i in pairs if r == rank)
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.vocab[w] for w in word)

    def encode(self, text: str) -> list[int]:
        """One text -> token ids without BOS/EOS."""
        ids: list[int] = []
        for part in _SPECIAL.split(text):
            if part in (BOS, EOS):
                ids.append(self.vocab[part])
                continue
            part = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", part)).lower()
            for piece in _PIECES.findall(part):
                ids.extend(self._bpe("".join(self._byte_symbol[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, prompts: str | Sequence[str], max_length: int = 77) -> torch.Tensor:
        """prompts -> ids [B, max_length] int64: BOS, tokens (truncated), EOS, EOS padding."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(prompts):
            ids = [self.bos_id, *self.encode(text)[:max_length - 2], self.eos_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
