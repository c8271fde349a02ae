"""models.atomic: the one atomic-write helper every output goes through."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from models.atomic import atomic_write, write_json_atomic, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "first")  # parent folders are made
    assert path.read_text() == "first"

    def broken(tmp: Path):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_json_is_made_safe(tmp_path):
    data = {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "n": np.int64(3), "p": tmp_path,
            "t": (1, 2), 4: "int key"}
    path = write_json_atomic(tmp_path / "r.json", data, indent=None, sort_keys=True)
    text = path.read_text()
    assert text.endswith("\n") and text.index('"4"') < text.index('"inf"')
    assert json.loads(text) == {"nan": None, "inf": None, "np": 0.5, "n": 3, "p": str(tmp_path), "t": [1, 2],
                                "4": "int key"}
