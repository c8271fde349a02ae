"""Prompt files: a JSON list of non-empty strings, UTF-8 (with or without a byte-order mark)."""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import UserError


class PromptFileError(UserError, ValueError):
    """The prompt file is missing or not a JSON list of strings."""


def load_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some Windows editors write one) is skipped
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path} is not UTF-8 text (byte {e.start})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
                              'Expected a list of strings, e.g. ["a boy", "a boy on the beach"]') from e
    if not isinstance(data, list):
        raise PromptFileError(f"{path} holds a JSON {type(data).__name__}; expected a list of strings, "
                              'e.g. ["a boy", "a boy on the beach"]')
    if not data:
        raise PromptFileError(f"{path} is an empty list: there is nothing to generate")
    for i, p in enumerate(data):
        if not isinstance(p, str):
            raise PromptFileError(f"{path}: item {i} is a {type(p).__name__} ({json.dumps(p)[:60]}); "
                                  "every item must be a string")
        if not p.strip():
            raise PromptFileError(f"{path}: item {i} is an empty string")
    return data
