"""personalize.extract.loaded_analyzer: a process that personalises many identities loads the face
models once, and loads them again when the pack's files change."""

import os
import shutil
from pathlib import Path

import pytest

from encoder.face_analysis import FacePolicy
from personalize.extract import face_setup, loaded_analyzer

WORLD = Path(__file__).resolve().parent.parent / "checkpoints" / "world"


def test_the_same_pack_is_loaded_once_and_again_after_a_change(tmp_path):
    pack = shutil.copytree(WORLD / "faces", tmp_path / "faces")
    cpu = ("CPUExecutionProvider",)
    first = loaded_analyzer(pack, FacePolicy(), cpu)
    assert loaded_analyzer(pack, FacePolicy(), cpu) is first
    assert loaded_analyzer(pack, FacePolicy(min_face_size=8), cpu) is not first  # another policy
    setups = [face_setup(encoder=str(WORLD / "faceid_encoder"), face_pack=str(pack), device="cpu") for _ in range(2)]
    assert setups[0].analyzer is setups[1].analyzer
    onnx = next(pack.glob("*.onnx"))
    stat = onnx.stat()
    os.utime(onnx, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    again = face_setup(encoder=str(WORLD / "faceid_encoder"), face_pack=str(pack), device="cpu")
    assert again.analyzer is not setups[0].analyzer


def test_a_missing_pack_is_the_usual_error_and_nothing_is_cached(tmp_path):
    from models.paths import WeightsError

    for _ in range(2):
        with pytest.raises(WeightsError, match="does not exist"):
            loaded_analyzer(tmp_path / "none", FacePolicy(), ("CPUExecutionProvider",))
