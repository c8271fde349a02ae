"""`bash scripts/world.sh --tiny`: every registered stage of `python -m pretrain.world` trains and exports a
whole world folder on the CPU; a rerun resumes every stage and trains nothing; WORLD_<STAGE>_ARGS reach
that stage only (the other stages refuse backbone or clip flags). A stage short of its total stops the script
(exit 75), a spent WORLD_CALL_MINUTES starts no stage, a WORLD_RECIPE's variables reach their stages, and
`python -m pretrain.world pack` carries a run to another folder that goes on from it. WORLD_SIDE_BY_SIDE's stages
train at the same time, a group out of the stage order is refused, a group led by a skipped stage still trains
the rest, and stopping the script stops them. The hour recipe gives every stage flags it takes.
`scripts/world_backbone_arms_call.sh` continues that world's backbone in two arms and evaluates each."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from models.errors import UserError
from pretrain.world.__main__ import NOT_FINISHED, STAGES, check_stage_flags, main, parse_args, stage_class
from pretrain.world.travel import pack, packed_paths

STAGE_CLASSES = {name: stage_class(name) for name in STAGES}

REPO = Path(__file__).resolve().parents[1]
SIDE = "face_detector eval_faces"  # two render readers side by side in the tiny world


def _world_sh(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_OUT": str(tmp_path / "runs"), "WORLD_DIR": str(tmp_path / "world"),
           "PYTHON": sys.executable, "WORLD_BACKBONE_ARGS": "--batch-reuse 2 --no-final-conv",
           "WORLD_CLIP_ARGS": "--hard-negatives", **env}
    return subprocess.run(["bash", str(REPO / "scripts/world.sh"), "--tiny", "--seed", "3", *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("world_sh")
    timed = root / "timed_python"  # the script's PYTHON, writing when each of its commands starts and ends
    timed.write_text(f'#!/usr/bin/env bash\necho "$(date +%s.%N) start $*" >> {root}/python_times.txt\n'
                     f'{sys.executable} "$@"; rc=$?\necho "$(date +%s.%N) end $*" >> {root}/python_times.txt\n'
                     'exit $rc\n')
    timed.chmod(0o755)
    return root, _world_sh(root, WORLD_SIDE_BY_SIDE=SIDE, PYTHON=str(timed))


def test_world_script_trains_every_stage_then_a_rerun_only_resumes(tiny_world):
    tmp_path, first = tiny_world
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    started = [line.split(": ")[1] for line in first.stdout.splitlines() if line.startswith("== world stage: ")]
    assert [line.split()[0] for line in started] == [s for s in STAGES if s != "autoencoder"]
    beside = [line for line in started if "side by side" in line]
    assert [line.split()[0] for line in beside] == SIDE.split()
    spans = {}  # stage -> {"start": t, "end": t} of its `train` process, from the timed PYTHON
    for line in (tmp_path / "python_times.txt").read_text().splitlines():
        when, edge, *command = line.split()
        if command[2:3] == ["train"]:  # -m pretrain.world train STAGE ...
            spans.setdefault(command[3], {})[edge] = float(when)
    for (one, a), (other, b) in itertools.combinations(spans.items(), 2):
        together = a["start"] < b["end"] and b["start"] < a["end"]
        assert together == ({one, other} == set(SIDE.split())), (one, other)  # only the side-by-side two overlap
    assert "== world stage skipped: autoencoder" in first.stdout  # only a backbone in its latent needs it
    world = tmp_path / "world"
    for name in ("world_clip/model.safetensors", "models/uvit_v1.safetensors", "models/pixel_space.safetensors",
                 "model_configs.json", "faces/recogniser.onnx", "faces/detector.onnx", "faces/pack.json",
                 "eval_faces/recogniser.onnx", "attributes/attributes.safetensors", "faceid_encoder/config.json"):
        assert (world / name).is_file(), name
    backbone = json.loads((tmp_path / "runs/backbone/checkpoint/state.json").read_text())["config"]
    assert backbone["train"]["batch_reuse"] == 2 and backbone["uvit"]["conv"] is False  # the backbone's flags
    assert backbone["train"]["eps_steps"] > 0 and len(backbone["train"]["level_gains"]) == 4  # the recipe
    clip = json.loads((tmp_path / "runs/clip/checkpoint/state.json").read_text())["config"]
    assert clip["hard_negatives"] is True  # the clip stage's flag
    folders = ["--out", str(tmp_path / "runs"), "--world", str(world)]
    assert all(main(["finished", stage, *folders]) == 0 for stage in STAGES if stage != "autoencoder")
    assert first.stdout.splitlines()[-1].startswith("== world done: every stage finished")
    again = _world_sh(tmp_path, WORLD_CALL_MINUTES="30")  # a call budget large enough changes nothing
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "== world stage: clip (at most 29." in again.stdout
    trained = [line for line in again.stdout.splitlines() if "] step " in line]
    assert not trained, trained  # every stage was finished: resumed, re-exported, no training step
    assert "pretrain:" in first.stderr and "pretrain:" not in again.stderr  # the identity stage's progress bar


def test_a_packed_world_goes_on_elsewhere_without_training_or_sharding_again(tiny_world, tmp_path, monkeypatch):
    root, first = tiny_world
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    monkeypatch.chdir(root)
    made = pack(Path("runs"), Path("world"), tmp_path / "pieces", STAGE_CLASSES, limit=256 * 2**10)
    assert len(made["pieces"]) > 1 and all(p.stat().st_size <= 256 * 2**10 for p in made["pieces"])
    names = {str(p) for p in packed_paths(Path("runs"), Path("world"), STAGE_CLASSES)}
    assert "runs/backbone/checkpoint/state.json" in names and "world/models/uvit_v1.safetensors" in names
    assert not [n for n in names if "/checkpoint/" in n and not n.endswith("/state.json")]  # finished: state alone
    assert not [n for n in names if n.startswith(("runs/identity/shards/", "runs/identity/run/checkpoints/"))]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(f"cat {tmp_path}/pieces/world_state.tar.* | tar -x", shell=True, cwd=elsewhere, check=True)
    again = _world_sh(elsewhere)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert not [line for line in again.stdout.splitlines() if "] step " in line]  # nothing trained again
    assert "data_prep" not in again.stdout and "pretrain:" not in again.stderr  # no shards, no pretraining
    with pytest.raises(UserError, match="is absolute"):
        pack(root / "runs", Path("world"), tmp_path / "p2", STAGE_CLASSES)


def test_backbone_arms_call_continues_the_backbone_in_each_arm_and_evaluates_it(tiny_world, tmp_path):
    root, first = tiny_world
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "BASE": str(tmp_path / "arms"), "WORLD": str(root / "world"),
           "STEPS": "2", "EVAL_SEEDS": "3", "CLASSIFY": "2", "RENDER_WORKERS": "0",
           "TRAIN_ARGS": "--tiny --device cpu", "EVAL_ARGS": "--tiny --device cpu", "PYTHON": sys.executable}
    arms = subprocess.run(["bash", str(REPO / "scripts/world_backbone_arms_call.sh"), "300", "plain:",
                           "face2:--face-weight 2"], env=env, capture_output=True, text=True, timeout=600)
    assert arms.returncode == 0, arms.stdout[-2000:] + arms.stderr[-2000:]
    assert (out / "plain_uvit_v1.safetensors").is_file() and (out / "face2_uvit_v1.safetensors").is_file()
    with tarfile.open(out / "arms.tgz") as tar:
        names = set(tar.getnames())
        for arm in ("plain", "face2"):
            for part in ("t2i_seed3", "single_attribute_seed3", "backbone_attributes_seed3"):
                assert f"logs/{arm}_{part}.json" in names, (arm, part, sorted(names))
        result = json.load(tar.extractfile("logs/face2_backbone_attributes_seed3.json"))
        assert result["backbone_attributes"]["renders"] == 2
    runs = tmp_path / "arms"
    face2 = json.loads((runs / "face2/runs/backbone/checkpoint/state.json").read_text())
    assert face2["step"] == 2 and face2["config"]["train"]["face_weight"] == 2.0  # the arm's own flags
    plain = json.loads((runs / "plain/runs/backbone/checkpoint/state.json").read_text())
    assert plain["config"]["train"]["face_weight"] == 1.0
    refused = subprocess.run(["bash", str(REPO / "scripts/world_backbone_arms_call.sh"), "300"], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "name at least one arm" in refused.stderr


def test_world_script_stops_at_a_stage_short_of_its_total_and_starts_none_without_a_minute_left(tmp_path):
    recipe = tmp_path / "recipe.env"
    recipe.write_text(': "${WORLD_CLIP_ARGS:=--batch-size 4}"\n')
    short = _world_sh(tmp_path, "--steps", "1", WORLD_RECIPE=str(recipe), WORLD_CLIP_ARGS="")  # one step a stage
    assert short.returncode == 75, short.stdout[-2000:] + short.stderr[-2000:]
    assert f"== world recipe: {recipe}" in short.stdout
    clip = json.loads((tmp_path / "runs/clip/checkpoint/state.json").read_text())
    assert clip["step"] == 1 and clip["config"]["batch_size"] == 4  # the recipe's flag reached its stage
    assert [line for line in short.stdout.splitlines() if line.startswith("== world stage")] == [  # one stage
        "== world stage: clip", short.stdout.splitlines()[-1]]  # the backbone never started without the clip
    assert "clip stopped before its total; rerun scripts/world.sh to continue" in short.stdout
    folders = ["--out", str(tmp_path / "runs"), "--world", str(tmp_path / "world")]
    assert main(["finished", "clip", *folders]) == NOT_FINISHED
    assert main(["finished", "identity", *folders]) == NOT_FINISHED
    names = {p.name for p in packed_paths(tmp_path / "runs", tmp_path / "world", STAGE_CLASSES)}
    assert {"state.json", "model.safetensors", "optimizer.safetensors"} <= names  # an unfinished stage, whole
    spent = _world_sh(tmp_path, WORLD_CALL_MINUTES="0.5", WORLD_RECIPE=str(recipe), WORLD_CLIP_ARGS="")  # < 1 min
    assert spent.returncode == 75 and "minutes are spent before stage clip" in spent.stdout
    assert main(["finished", "clip", *folders]) == NOT_FINISHED  # nothing trained in the spent call
    with pytest.raises(UserError, match="unknown stage 'nope'"):
        main(["finished", "nope", *folders])


def test_world_script_refuses_side_by_side_stages_out_of_the_stage_order(tmp_path):
    for side in ("attributes faces", "faces nope", "clip backbone"):
        refused = _world_sh(tmp_path, WORLD_SIDE_BY_SIDE=side)
        assert refused.returncode == 2, (side, refused.stdout[-2000:] + refused.stderr[-2000:])
        assert "must name stages next to each other in their order" in refused.stderr
        assert not (tmp_path / "runs").exists()  # nothing started


def test_a_side_by_side_group_led_by_a_skipped_stage_still_trains_the_others(tmp_path):
    """The autoencoder is skipped without "--space autoencoder"; a group it leads runs from its next stage."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"  # lists the real stages; records each train command; every stage reads as finished
    fake.write_text(f'#!/usr/bin/env bash\n[ "$3" = list ] && exec {sys.executable} "$@"\n'
                    f'[ "$3" = train ] && echo "$4" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    ran = _world_sh(tmp_path, PYTHON=str(fake), WORLD_SIDE_BY_SIDE="autoencoder backbone", WORLD_BACKBONE_ARGS="")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert calls.read_text().split() == [s for s in STAGES if s != "autoencoder"]


def test_stopping_the_script_stops_the_stages_it_runs_side_by_side(tmp_path):
    env = {**os.environ, "WORLD_OUT": str(tmp_path / "runs"), "WORLD_DIR": str(tmp_path / "world"),
           "PYTHON": sys.executable, "WORLD_SIDE_BY_SIDE": "clip autoencoder",
           "WORLD_BACKBONE_ARGS": "--space autoencoder"}
    script = subprocess.Popen(["bash", str(REPO / "scripts/world.sh"), "--tiny"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    started = [next(script.stdout) for _ in range(2)]
    assert all("side by side" in line for line in started), started
    time.sleep(2)  # the two stages' processes are running (importing torch, at least)
    script.terminate()
    assert script.wait(timeout=60) == 143
    deadline = time.monotonic() + 10
    while (left := _processes_naming(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left  # background stages would outlive the script without its trap


def _processes_naming(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended
            continue
        if any(str(path).encode() in w for w in words):
            found.append(" ".join(w.decode(errors="replace") for w in words))
    return found


def _recipe(**preset: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], **preset}
    show = 'source scripts/world_hour.env && for v in FACEWORLD_VERSION ${!WORLD_@}; do echo "$v=${!v}"; done'
    shown = subprocess.run(["bash", "-c", show], cwd=REPO, env=env,
                           capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if line.startswith(("WORLD_", "FACEWORLD_")))


def test_the_hour_recipe_sizes_every_stage_with_flags_it_takes():
    recipe = _recipe()
    assert recipe["FACEWORLD_VERSION"] == "faceworld-3"
    stages = {k.removeprefix("WORLD_").removesuffix("_ARGS").lower(): v for k, v in recipe.items()
              if k.endswith("_ARGS")}
    assert set(stages) == set(STAGES)  # every stage's total is the recipe's, none the stage's default
    for stage, flags in stages.items():
        args = parse_args(["train", stage, *flags.split()])
        stage_class(stage)
        check_stage_flags(args)  # no flag a stage refuses
        assert args.total_steps > 0, stage
    assert " --space autoencoder " in f" {stages['backbone']} "  # so world.sh runs the autoencoder stage
    preset = _recipe(WORLD_CLIP_ARGS="--total-steps 5", FACEWORLD_VERSION="faceworld-2")
    assert preset["WORLD_CLIP_ARGS"] == "--total-steps 5" and preset["FACEWORLD_VERSION"] == "faceworld-2"
