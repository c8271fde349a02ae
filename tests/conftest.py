"""Shared fixtures: paths of the reference files under tests/reference/, one torch thread."""

from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Golden weights, inputs and outputs of the public reference code (see its README.md)."""
    return REFERENCE / "golden"


@pytest.fixture(scope="session")
def keys_dir() -> Path:
    """`*.keys.tsv`: name<TAB>shape<TAB>dtype of every state-dict entry of the released modules."""
    return REFERENCE / "keys"


@pytest.fixture
def one_thread():
    """Tiny models and the renderer's many small ops run fastest on one thread (and do not fight other
    processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _renderer_version_of_the_environment():
    """Commands run in-process on a world folder make its renderer version the process's ($FACEWORLD_VERSION,
    data_prep.faceworld.render.use_folder_version): every test starts without it and leaves none behind. (Not
    with monkeypatch: its delenv of an unset variable records nothing, so a value set by the code under test
    would outlive the test, and a test's own monkeypatch.undo() would bring back an outer value.)"""
    import os

    before = os.environ.pop("FACEWORLD_VERSION", None)
    yield
    os.environ.pop("FACEWORLD_VERSION", None)
    if before is not None:
        os.environ["FACEWORLD_VERSION"] = before
