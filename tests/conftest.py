"""Shared fixtures: paths of the reference files under tests/reference/."""

from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Golden weights, inputs and outputs of the public reference code (see its README.md)."""
    return REFERENCE / "golden"


@pytest.fixture(scope="session")
def keys_dir() -> Path:
    """`*.keys.tsv`: name<TAB>shape<TAB>dtype of every state-dict entry of the released modules."""
    return REFERENCE / "keys"
