"""The web page's parts that need no browser (personalize/app.py): which weights it runs, the upload
limits, the numbers and prompts checked as the commands check theirs. The page itself is tested in a
real browser by tests/test_app_browser.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import UserError
from models.paths import KNOWN_WEIGHTS, WeightsError
from personalize import app

ROOT = Path(__file__).resolve().parent.parent


def _fake_world(root: Path) -> Path:
    """A world-like folder with every part the page needs present (find_weights checks presence only)."""
    for sub in ("world_clip", "faces", "faceid_encoder"):
        (root / sub).mkdir(parents=True)
    (root / "models").mkdir()
    (root / "models" / "uvit_v1.safetensors").touch()
    (root / "models" / "pixel_space.safetensors").touch()
    (root / "world_clip" / "model.safetensors").touch()
    return root


def _fake_real(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("uvit", "autoencoder", "caption_decoder"):
        (root / KNOWN_WEIGHTS[name][0]).touch()
    for name in ("clip_text", "face_pack", "identity"):
        (root / KNOWN_WEIGHTS[name][0]).mkdir()
    return root


def test_no_real_weights_runs_the_demo_world_and_real_weights_run_themselves(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIDIFFUSER_WEIGHTS", raising=False)
    checkpoints = tmp_path / "checkpoints"
    _fake_world(checkpoints / "world")
    w = app.pick_weights(checkpoints=checkpoints)
    assert w.root == checkpoints / "world" and w.demo and "no real weights" in w.why
    _fake_real(checkpoints)
    w = app.pick_weights(checkpoints=checkpoints)
    assert w.root == checkpoints and not w.demo


def test_some_real_weights_but_not_all_stop_naming_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIDIFFUSER_WEIGHTS", raising=False)
    checkpoints = tmp_path / "checkpoints"
    _fake_world(checkpoints / "world")
    checkpoints.joinpath("uvit_v1.pth").touch()
    with pytest.raises(WeightsError, match="some real weights but not all: missing UniDiffuser AutoencoderKL") as e:
        app.pick_weights(checkpoints=checkpoints)
    assert "--weights" in e.value.hint


def test_the_weights_folder_is_given_by_flag_or_environment(tmp_path, monkeypatch):
    world = _fake_world(tmp_path / "elsewhere")
    monkeypatch.setenv("UNIDIFFUSER_WEIGHTS", str(world))
    assert app.pick_weights(checkpoints=tmp_path / "none").root == world
    other = _fake_real(tmp_path / "real")
    w = app.pick_weights(str(other), checkpoints=tmp_path / "none")
    assert w.root == other and not w.demo and w.why == "given with --weights"
    (world / "faceid_encoder").rmdir()
    with pytest.raises(WeightsError, match="is not complete: missing pretrained identity module"):
        app.pick_weights(str(world))


def test_upload_limits_and_names(tmp_path):
    files = []
    for i in range(app.MAX_PHOTOS + 1):
        f = tmp_path / "in" / str(i) / "photo 1.jpg"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        files.append(str(f))
    with pytest.raises(UserError, match=f"at most {app.MAX_PHOTOS} photos"):
        app.copy_uploads(files, tmp_path / "out")
    folder = app.copy_uploads(files[:3], tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["photo_1-1.jpg", "photo_1-2.jpg", "photo_1.jpg"]


def test_numbers_and_prompts_are_checked_as_the_commands_check_them(tmp_path):
    assert app.checked(30.0, "steps", int, 1, 1000) == 30
    with pytest.raises(UserError, match=r"steps: must be at least 1 \(got 0\)"):
        app.checked(0, "steps", int, 1, 1000)
    with pytest.raises(UserError, match="seed: 'None' is not an integer"):
        app.checked(None, "seed", int)
    assert app.parse_prompts(" a boy \n\n a boy at sea\n") == ["a boy", "a boy at sea"]
    with pytest.raises(UserError, match="no prompt"):
        app.parse_prompts("  \n")
    with pytest.raises(UserError, match=f"at most {app.MAX_PROMPTS}"):
        app.parse_prompts("a boy\n" * (app.MAX_PROMPTS + 1))
    with pytest.raises(UserError, match="no usable face photo in the uploaded photos") as e:
        with app.named_paths({tmp_path / "x": "the uploaded photos"}):
            raise UserError(f"no usable face photo in {tmp_path / 'x'}", hint=f"see {tmp_path / 'x'}")
    assert e.value.hint == "see the uploaded photos"


def test_analytics_are_off_before_gradio_is_imported():
    code = ("import os, sys, personalize.app; assert 'gradio' not in sys.modules; "
            "print(os.environ['GRADIO_ANALYTICS_ENABLED'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
