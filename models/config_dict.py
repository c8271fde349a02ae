"""Frozen dataclass configs from plain dicts (JSON files, checkpoints), unknown keys refused.

    config = config_from_dict(UViTConfig, {"embed_dim": 1536, ...}, "UViT")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config read from a file or a command line has unknown keys or values out of range."""


def config_from_dict(cls: type[T], d: dict[str, Any], what: str, inert: Iterable[str] = ()) -> T:
    """cls(**d) for a dataclass `cls`. A key that is not a field raises ConfigError naming it and the
    known fields, unless it is in `inert` (accepted and dropped: keys of another format that carry
    nothing here)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - set(inert))
    if unknown:
        raise ConfigError(f"{what} config has unknown keys {unknown}; known: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k in names})
