"""The main job's embedded demo (issue 17): scripts/run.sh's choice between the real job, the demo and a
stop; the committed demo data; and the whole demo on the committed world (what a fresh clone runs)."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.demo import DEMO_DATA, METHODS, choose_weights, demo_identities, make_demo_data
from models.check_weights import MAIN_JOB

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ run.sh's decision
@pytest.fixture(scope="module")
def full_weights(tmp_path_factory):
    """A weights folder with every part the main job needs (the tiny identity world's layout)."""
    from tests.tiny_eval_world import make_eval_world

    return make_eval_world(tmp_path_factory.mktemp("weights") / "world")


def _weights(kind: str, tmp_path: Path, full: Path) -> Path:
    if kind == "all":
        return full
    root = tmp_path / "weights"
    root.mkdir(parents=True)
    if kind == "some":  # the usual state of a real user before pretraining: all but the identity module
        shutil.copytree(full / "faces", root / "faces")
    return root


def _write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("kind, outcome", [("none", "demo"), ("some", "stop"), ("all", "real")])
def test_run_sh_runs_the_demo_only_without_any_weight(kind, outcome, full_weights, tmp_path):
    """scripts/run.sh itself, in a copy of the repository whose setup, train.sh, sample.sh and eval.demo
    only say that they ran (models.check_weights is the real one)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "run.sh", repo / "scripts" / "run.sh")
    _write_script(repo / "scripts" / "setup.sh", "true\n")
    _write_script(repo / "scripts" / "train.sh", "echo TRAIN RAN\n")
    _write_script(repo / "scripts" / "sample.sh", "echo SAMPLE RAN\n")
    _write_script(repo / ".venv" / "bin" / "python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    _write_script(repo / "eval" / "__init__.py", "")
    _write_script(repo / "eval" / "demo.py", "print('DEMO RAN')\n")
    (repo / "eval_prompts").mkdir()
    env = {**os.environ, "UNIDIFFUSER_WEIGHTS": str(_weights(kind, tmp_path, full_weights)), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(repo / "scripts" / "run.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    ran = {what for what in ("DEMO", "TRAIN", "SAMPLE") if f"{what} RAN" in out}
    if outcome == "demo":
        assert proc.returncode == 0 and ran == {"DEMO"}, out
    elif outcome == "stop":
        assert proc.returncode == 2 and ran == set(), out
        assert re.search(r"missing +uvit: UniDiffuser v1 UViT not found", out), out
        assert re.search(r"missing +identity: .*scripts/pretrain\.sh", out), out  # how to make it
        assert "ok       face_pack" in out and "stopped" in out
    else:
        assert proc.returncode == 0 and ran == {"TRAIN", "SAMPLE"}, out
        assert "all 6 weight files found and readable" in out


def test_the_decision_is_one_function_shared_with_run_sh(full_weights, tmp_path):
    text = (REPO / "scripts" / "run.sh").read_text()
    assert re.search(r'needed="([^"]*)"', text)[1].split() == list(MAIN_JOB)
    assert "check_weights --presence $needed" in text
    for kind, expected in (("none", "demo"), ("some", "incomplete"), ("all", "real")):
        root = _weights(kind, tmp_path / kind, full_weights)
        choice = choose_weights(root, world=tmp_path / "some_world")
        assert choice.kind == expected
        if expected == "demo":
            assert choice.folder == tmp_path / "some_world" and "checkpoints/README.md" in choice.note
            assert "\n" not in choice.note  # one line
        else:
            assert choice.folder == root


# ---------------------------------------------------------------------------------- the demo data
def test_committed_demo_data_is_what_its_command_makes(tmp_path):
    made = tmp_path / "demo"
    make_demo_data(made)
    files = sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(DEMO_DATA) for p in DEMO_DATA.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".png":  # the pixels (a PNG encoder may pack them differently)
            assert np.array_equal(np.asarray(Image.open(made / rel)), np.asarray(Image.open(DEMO_DATA / rel))), rel
        elif rel.name == "faceworld.json":  # its command names the folder it was made in
            made_side, side = (json.loads((d / rel).read_text()) for d in (made, DEMO_DATA))
            assert made_side.pop("command").endswith(str(made)) and side.pop("command").endswith("checkpoints/demo")
            assert made_side == side
        else:
            assert (made / rel).read_bytes() == (DEMO_DATA / rel).read_bytes(), rel
    people = demo_identities()
    assert [p.name for p in people] == ["girl1", "girl2"] and all(len(p.photos) == 5 for p in people)
    for p in people:
        assert [q["layout"] for q in p.prompts] == ["sim", "sim", "edit", "edit"]
        assert p.prompts[2]["held_out"] and p.prompts[2]["wanted"] and p.prompts[3]["wanted"]
        assert json.loads((DEMO_DATA / "eval_prompts" / f"{p.name}_sim.json").read_text()) == p.texts[:2]
        assert json.loads((DEMO_DATA / "eval_prompts" / f"{p.name}_edit.json").read_text()) == p.texts[2:]
    assert sum(f.stat().st_size for f in DEMO_DATA.rglob("*") if f.is_file()) < 200_000


# ---------------------------------------------------------------------------- the demo, end to end
def test_demo_end_to_end_on_the_committed_world(tmp_path):
    """What `bash scripts/run.sh` does on a fresh clone without weights: python -m eval.demo on the
    committed world (or $UNIDIFFUSER_DEMO_WORLD) and demo identities; then a rerun, which does no sampling."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "eval.demo", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "finetuned parameters: 0" in text and "total finetuned parameters: 0" in text
    result = json.loads((out / "scores.json").read_text())
    assert result["finetuned_parameters"] == 0
    people = demo_identities()
    for person in people:
        for folder in (out / "samples" / person.name, out / "text_only" / person.name):
            names = sorted(p.name for p in folder.glob("*.jpg"))
            assert names == sorted(f"{i}-{k:03}.jpg" for i in range(len(person.prompts)) for k in range(3))
            assert all(Image.open(folder / n).size == (64, 64) for n in names)
        sheet = Image.open(out / "sheets" / f"{person.name}.png")
        assert sheet.format == "PNG" and sheet.height > 5 * 128  # the photos' row and 4 prompt rows
    assert set(result["scores"]) == set(METHODS) and (out / "scores.md").is_file()
    assert "identity similarity" in text and str(out / "sheets") in text.replace("\n", " ")
    # on a CPU of 2 cores or more, text only ran beside the scripts on half of them (the scripts keep all)
    cores = os.cpu_count() or 1
    assert result["settings"]["text_only_threads_beside_scripts"] == (cores // 2 if cores >= 2 else None)
    # rerun: every image is kept, the same scores come out
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = re.findall(r"(\d+) prompts generated, (\d+) already done", again.stdout)  # sample.py and its table
    assert resumed and set(resumed) == {("0", "4")}, again.stdout
    assert json.loads((out / "scores.json").read_text())["scores"] == result["scores"]
    # the identity module carries identity: evaluation recogniser, over the images with a face (an image
    # without one scores 0, above a wrong face's usual cosine here), on every demo identity
    ident = {m: result["scores"][m]["per_identity"] for m in METHODS}
    assert set(result["identity_above_text_only"]) == {p.name for p in people}
    assert all(result["identity_above_text_only"].values()), ident


def test_a_failing_script_beside_text_only_stops_the_demo_with_its_error(tmp_path, monkeypatch, capsys):
    """Side by side (a CPU of 2 cores or more): when train.sh fails, its output's end is shown, the demo stops
    with the script's one-line error, and text only does not go on to the next identity."""
    import eval.demo as demo
    import eval.world
    from models.errors import UserError

    def failing(argv, env, log, echo=True):
        assert argv[1] == "scripts/train.sh" and not echo  # held back beside text only
        return 1, "girl1        failed  no face found in the photos\n"

    made = []
    monkeypatch.setattr(demo, "side_by_side_threads", lambda device: 1)
    monkeypatch.setattr(demo, "stream", failing)
    monkeypatch.setattr(eval.world, "plain_pipeline", lambda *a: __import__("time").sleep(0.5))  # the script fails
    monkeypatch.setattr(eval.world, "generate_text_only", lambda pipe, texts, folder, *a, **k: made.append(folder))
    with pytest.raises(UserError, match=r"scripts/train.sh failed \(train.py; exit 1\)"):
        demo.run_demo(demo.demo_world(), DEMO_DATA, tmp_path / "demo", demo.Settings(device="cpu"), progress=False)
    assert made == [] and "no face found" in capsys.readouterr().out


def test_a_rerun_keeps_images_only_when_weights_data_and_settings_are_the_same(tmp_path):
    from eval.demo import _fresh_start

    key = {"world": {"models/uvit_v1.safetensors": "ab"}, "settings": {"steps": 20}}
    assert not _fresh_start(tmp_path, key)  # first run
    (tmp_path / "samples" / "girl1").mkdir(parents=True)
    (tmp_path / "scores.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    assert _fresh_start(tmp_path, json.loads(json.dumps(key)))
    assert (tmp_path / "samples" / "girl1").is_dir()
    assert not _fresh_start(tmp_path, {**key, "world": {"models/uvit_v1.safetensors": "cd"}})  # new weights
    assert not (tmp_path / "samples").exists() and not (tmp_path / "scores.json").exists()
    assert (tmp_path / "logs").is_dir()  # logs are appended to
