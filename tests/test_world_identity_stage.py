"""The identity stage of pretrain.world: data_prep on renders, pretrain.train, export; rerun skips it all."""

import json
import subprocess

import torch

from pretrain.world import identity
from pretrain.world.__main__ import STAGES, main


def test_identity_stage_comes_after_backbone_and_faces():
    names = list(STAGES)
    assert "identity" in names
    assert names.index("identity") > names.index("backbone")
    assert all(names.index("identity") > i for i, n in enumerate(names) if "face" in n)


def test_tiny_identity_stage_trains_exports_and_resumes(tmp_path, monkeypatch):
    from tests.tiny_eval_world import make_eval_world

    world = make_eval_world(tmp_path / "world")
    (world / "faceid_encoder").rename(tmp_path / "unused_encoder")  # the stage makes its own
    out = tmp_path / "runs"
    assert main(["train", "identity", "--tiny", "--out", str(out), "--world", str(world)]) == 0
    manifest = json.loads((out / "identity" / "shards" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["written"] == 6  # 3 identities x 2 renders
    assert manifest["settings"]["source"]["kind"] == "faceworld" and manifest["settings"]["source"]["split"] == "train"
    assert "face_recogniser" in manifest["settings"]["models"]  # the recogniser's fingerprint travels
    exported = world / "faceid_encoder"
    config = json.loads((exported / "config.json").read_text())
    assert config["pretraining"]["step"] == 2
    assert (out / "identity" / "curves.png").stat().st_size > 0

    def no_commands(*args, **kwargs):
        raise AssertionError(f"a finished stage ran a command: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_commands)
    before = (exported / "identity.safetensors").stat().st_mtime_ns
    opts = identity.StageOptions(out=out, world=world, device=torch.device("cpu"), tiny=True)
    result = identity.IdentityStage(opts).run()
    assert result["done"] and result["shards"] and result["pretrained"]
    assert (exported / "identity.safetensors").stat().st_mtime_ns == before  # same checkpoint: not copied again


def test_a_time_budget_stops_a_command(tmp_path):
    import sys
    import time

    t0 = time.monotonic()
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    finished = identity.run_command(sleeper, deadline=time.monotonic() + 1)
    assert not finished and time.monotonic() - t0 < 20


def test_shards_only_then_waits_for_the_backbone_and_passes_total_steps(tmp_path, monkeypatch):
    """--steps 0 writes the shards only; without a backbone the stage stops after them; --total-steps
    becomes pretraining's max_steps."""
    from pathlib import Path

    commands = []

    def fake_run(argv, deadline, env=None):
        commands.append(argv)
        if "data_prep" in argv:
            shards = Path(argv[argv.index("--out") + 1])
            shards.mkdir(parents=True, exist_ok=True)
            (shards / "manifest.json").write_text(json.dumps({"complete": True}))
        return True

    monkeypatch.setattr(identity, "run_command", fake_run)
    world, out = tmp_path / "world", tmp_path / "runs"
    opts = identity.StageOptions(out=out, world=world, device=torch.device("cpu"), tiny=True, max_steps=0)
    assert identity.IdentityStage(opts).run() == {"done": False, "shards": True, "pretrained": False}
    assert len(commands) == 1 and "data_prep" in commands[0]
    opts = identity.StageOptions(out=out, world=world, device=torch.device("cpu"), tiny=True, total_steps=7)
    assert not identity.IdentityStage(opts).run()["done"]  # no backbone yet: nothing more ran
    assert len(commands) == 1
    argv = identity.IdentityStage(opts).pretrain_command()
    assert argv[-2:] == ["--max_steps", "7"]  # the last one wins (argparse)
