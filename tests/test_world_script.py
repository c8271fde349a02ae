"""`bash scripts/world.sh --tiny`: every registered stage of `python -m pretrain.world` trains and exports a
whole world folder on the CPU; a rerun resumes every stage and trains nothing; WORLD_<STAGE>_ARGS reach
that stage only (the other stages refuse backbone or clip flags)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pretrain.world.__main__ import STAGES

REPO = Path(__file__).resolve().parents[1]


def _world_sh(tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORLD_OUT": str(tmp_path / "runs"), "WORLD_DIR": str(tmp_path / "world"),
           "PYTHON": sys.executable, "WORLD_BACKBONE_ARGS": "--batch-reuse 2 --no-final-conv",
           "WORLD_CLIP_ARGS": "--hard-negatives"}
    return subprocess.run(["bash", str(REPO / "scripts/world.sh"), "--tiny", "--seed", "3"], env=env,
                          capture_output=True, text=True, timeout=600)


def test_world_script_trains_every_stage_then_a_rerun_only_resumes(tmp_path):
    first = _world_sh(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert [line.split(": ")[1] for line in first.stdout.splitlines() if line.startswith("== world stage")] \
        == list(STAGES)
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
    again = _world_sh(tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    trained = [line for line in again.stdout.splitlines() if "] step " in line]
    assert not trained, trained  # every stage was finished: resumed, re-exported, no training step
    assert "pretrain:" in first.stderr and "pretrain:" not in again.stderr  # the identity stage's progress bar
