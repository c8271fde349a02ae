"""Configuration of the identity module (projector + injection), stored beside its weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from models.config_dict import config_from_dict
from models.errors import number

# The identity start, the noise level from which the identity is used (sample.py --id-start, a module's
# config.json sampling.id_start; 1: every step), lies in [ID_START_MIN, 1]; id_start_value parses it.
ID_START_MIN = 0.01
id_start_value = number(float, ID_START_MIN, 1)

FORMAT_NAME = "unidiffuser-faceid-identity"
FORMAT_VERSION = 1

Injection = Literal["extra_tokens", "text_slots"]


@dataclass(frozen=True)
class IdentityConfig:
    """Identity module hyper-parameters; the backbone fields must match the UViT it wraps.

    injection:
      "extra_tokens" (default): K tokens of width `embed_dim` join the joint sequence after the
        text tokens with learned position embeddings; every block sees them through a gated
        attention term (per block and head, zero-initialised).
      "text_slots": K tokens of width `text_dim` overwrite the last K positions of the 77-token
        text context (CLIP padding for short prompts), blended by a zero-initialised gate.
    kv_rank (extra_tokens only): rank of a trainable low-rank term that each block adds to the identity
      tokens' keys and values (IP-Adapter's decoupled keys and values, as a low-rank delta on the frozen
      projection); its up-projections start at zero, so a new module computes what kv_rank 0 does.
      0: none, the frozen block's projections alone.
    """

    face_dim: int = 512  # ArcFace embedding width
    num_tokens: int = 4  # K
    hidden_dim: int = 1024  # projector MLP width
    injection: Injection = "extra_tokens"
    use_flip: bool = True  # average each photo's embedding with its mirrored crop's
    kv_rank: int = 0  # per-block low-rank identity key/value delta (0: none)
    # backbone dimensions (UViT v1)
    embed_dim: int = 1536
    text_dim: int = 64
    num_text_tokens: int = 77
    num_heads: int = 24
    num_blocks: int = 31  # in + mid + out blocks = depth + 1

    def __post_init__(self):
        if problem := injection_problem(self.injection, self.kv_rank):
            raise ValueError(problem)
        if self.injection == "text_slots" and not 0 < self.num_tokens < self.num_text_tokens:
            raise ValueError(f"text_slots needs 0 < num_tokens < {self.num_text_tokens}")

    @property
    def token_dim(self) -> int:
        """Width of the tokens the projector emits."""
        return self.embed_dim if self.injection == "extra_tokens" else self.text_dim

    @classmethod
    def for_uvit(cls, uvit_config, **overrides) -> IdentityConfig:
        """Backbone fields taken from a `models.uvit.UViTConfig`."""
        return cls(embed_dim=uvit_config.embed_dim, text_dim=uvit_config.text_dim,
                   num_text_tokens=uvit_config.num_text_tokens, num_heads=uvit_config.num_heads,
                   num_blocks=2 * (uvit_config.depth // 2) + 1, **overrides)

    def backbone_mismatch(self, uvit_config) -> list[str]:
        """Fields that disagree with the UViT this module would wrap (empty when compatible)."""
        want = IdentityConfig.for_uvit(uvit_config)
        names = ("embed_dim", "text_dim", "num_text_tokens", "num_heads", "num_blocks")
        return [f"{n}: module {getattr(self, n)} vs backbone {getattr(want, n)}" for n in names
                if getattr(self, n) != getattr(want, n)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IdentityConfig:
        return config_from_dict(cls, d, "identity")


def injection_problem(injection: str, kv_rank: int) -> str | None:
    """What is wrong with an injection and key/value rank pair, or None (also checked by pretraining's
    config before anything is built)."""
    if injection not in ("extra_tokens", "text_slots"):
        return f"injection must be 'extra_tokens' or 'text_slots', got {injection!r}"
    if kv_rank < 0 or (kv_rank and injection != "extra_tokens"):
        return f"kv_rank must be 0, or positive with extra_tokens injection; got {kv_rank} with {injection}"
    return None
