"""UniDiffuser's caption decoder, checkpoint-compatible with `caption_decoder.pth` (153 entries).

Two small linear maps around a GPT-2:
- `encode_prefix` Linear(768 -> 64): CLIP-L text features [B, 77, 768] -> the UViT's text input
  [B, 77, 64]. This is the only part text-to-image needs (`load_encode_prefix`).
- `decode_prefix` Linear(64 -> 768) and `gpt` (GPT-2 small, vocabulary 50258 = GPT-2's + `<|EOS|>`):
  turn the UViT's text output back into a caption (image-to-text; not used by this project).

The real file prefixes every key with `module.` and may hold `module.clip*` entries and GPT-2
`attn.bias` / `attn.masked_bias` buffers; the loaders ignore those. transformers is imported only
when a GPT-2 is built, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .config_dict import config_from_dict
from .paths import WeightsError, find_weights
from .weights import README_HINT, as_config, build_on_meta, identify, load_frozen, load_strict, read_state_dict

WHAT = "caption decoder (caption_decoder.pth)"
# Entries of the released file that are not part of the module.
IGNORED_KEYS = (r"^clip", r"\.attn\.bias$", r"\.attn\.masked_bias$")


@dataclass(frozen=True)
class CaptionDecoderConfig:
    text_dim: int = 768  # CLIP-L text width (encode_prefix input)
    hidden_dim: int = 64  # UViT text width (encode_prefix output, decode_prefix input)
    vocab_size: int = 50258  # GPT-2's 50257 + <|EOS|>
    n_positions: int = 1024
    n_embd: int = 768  # GPT-2 width (decode_prefix output)
    n_layer: int = 12
    n_head: int = 12

    @classmethod
    def v1(cls) -> CaptionDecoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> CaptionDecoderConfig:
        """Same structure, small enough for CPU tests."""
        return cls(text_dim=32, hidden_dim=8, vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)

    @classmethod
    def from_dict(cls, d: dict) -> CaptionDecoderConfig:
        return config_from_dict(cls, d, "caption decoder")

    def gpt2_config(self):
        """The transformers GPT2Config of the `gpt` submodule."""
        from transformers import GPT2Config

        # GPT-2's <|endoftext|> is id 50256; a tiny vocabulary puts it at its last id instead
        eos = min(50256, self.vocab_size - 1)
        return GPT2Config(vocab_size=self.vocab_size, n_positions=self.n_positions, n_embd=self.n_embd,
                          n_layer=self.n_layer, n_head=self.n_head, bos_token_id=eos, eos_token_id=eos)


class CaptionDecoder(nn.Module):
    """encode_prefix, decode_prefix and a GPT-2 LM head model (`gpt`).

    encode(features [B, L, text_dim]) -> [B, L, hidden_dim]
    forward(tokens [B, T] long, features [B, L, text_dim]) -> logits [B, L + T, vocab_size]
    """

    def __init__(self, config: CaptionDecoderConfig):
        super().__init__()
        from transformers import GPT2LMHeadModel

        self.config = config
        self.gpt = GPT2LMHeadModel(config.gpt2_config())
        self.encode_prefix = nn.Linear(config.text_dim, config.hidden_dim)
        self.decode_prefix = nn.Linear(config.hidden_dim, config.n_embd)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, L, hidden_dim]."""
        return self.encode_prefix(features)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Teacher-forced caption logits: the decoded prefix embeddings come first, then the tokens."""
        prefix = self.decode_prefix(self.encode_prefix(features))
        embeds = torch.cat([prefix, self.gpt.transformer.wte(tokens)], dim=1)
        return self.gpt(inputs_embeds=embeds).logits

    def tie_weights_if_equal(self) -> None:
        """Share lm_head and wte again (assigning loaded tensors unties them) when their values agree."""
        wte, head = self.gpt.transformer.wte.weight, self.gpt.lm_head.weight
        if wte is not head and wte.shape == head.shape and torch.equal(wte, head):
            self.gpt.lm_head.weight = wte


class _EncodePrefixOnly(nn.Module):
    """Holder so that the key names (and error messages) are the file's: encode_prefix.weight/bias."""

    def __init__(self, config: CaptionDecoderConfig):
        super().__init__()
        self.encode_prefix = nn.Linear(config.text_dim, config.hidden_dim)


def load_encode_prefix(path: str | os.PathLike | None = None,
                       config: CaptionDecoderConfig | dict | None = None, *,
                       device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Linear:
    """Frozen encode_prefix Linear(text_dim -> hidden_dim) read from caption_decoder.pth.

    Only the `encode_prefix.*` entries are read (GPT-2 is not built). path None: looked up in the
    weights folder.
    """
    config = as_config(config, CaptionDecoderConfig)
    path = find_weights("caption_decoder") if path is None else path
    state_dict = read_state_dict(path, WHAT, meta=torch.device(device).type == "meta")  # meta: a cheap check
    if not any(k.startswith("encode_prefix.") for k in state_dict):
        keys = list(state_dict)
        looks = identify(keys)
        raise WeightsError(
            f"{WHAT}: {path} is not a caption decoder file: it has no encode_prefix.* entries. It has "
            f"{len(keys)} entries, such as {keys[:8]}"
            + (f"; it looks like {looks}" if looks else "")
            + f". Pass caption_decoder.pth of the UniDiffuser v1 release. {README_HINT}")
    holder = build_on_meta(lambda: _EncodePrefixOnly(config))
    load_strict(holder, state_dict, path, WHAT, ignore=(r"^(?!encode_prefix\.)",), dtype=dtype, device=device)
    return holder.encode_prefix.to(device).eval().requires_grad_(False)


def load_caption_decoder(path: str | os.PathLike | None = None,
                         config: CaptionDecoderConfig | dict | None = None, *,
                         device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None) -> CaptionDecoder:
    """The whole frozen CaptionDecoder, strictly loaded (ignoring the file's clip* and attn buffers)."""
    config = as_config(config, CaptionDecoderConfig)
    path = find_weights("caption_decoder") if path is None else path
    model = load_frozen(lambda: CaptionDecoder(config), path, WHAT, device=device, dtype=dtype,
                        ignore=IGNORED_KEYS)
    model.tie_weights_if_equal()
    return model
