"""`python -m pretrain.world train clip|backbone --tiny`: run, resume from the checkpoint, export a world
folder that the real pipeline loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.world.__main__ import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("world")
    out, world = root / "runs", root / "world"
    args = ["--tiny", "--out", str(out), "--world", str(world)]
    # world-CLIP: a first call stops after 2 of its 3 steps, the second continues and exports
    assert main(["train", "clip", *args, "--steps", "2"]) == 0
    state = json.loads((out / "clip/checkpoint/state.json").read_text())
    assert state["step"] == 2 and not state["done"] and not (world / "world_clip").exists()
    assert main(["train", "clip", *args]) == 0
    state = json.loads((out / "clip/checkpoint/state.json").read_text())
    assert state["step"] == 3 and state["done"]
    # the backbone, likewise
    assert main(["train", "backbone", *args, "--steps", "1"]) == 0
    assert json.loads((out / "backbone/checkpoint/state.json").read_text())["step"] == 1
    assert main(["train", "backbone", *args]) == 0
    return out, world


def test_stages_export_a_world_folder(world):
    out, root = world
    for name in ("world_clip/model.safetensors", "world_clip/vocab.json", "world_clip/tokenizer_config.json",
                 "models/uvit_v1.safetensors", "models/pixel_space.safetensors", "model_configs.json"):
        assert (root / name).is_file(), name
    configs = json.loads((root / "model_configs.json").read_text())
    assert configs["autoencoder"]["kind"] == "pixel_space" and configs["uvit"]["num_text_tokens"] == 24
    vocab = json.loads((root / "world_clip/vocab.json").read_text())
    assert {"man", "woman", "sunglasses", "wearing"} <= set(vocab)
    assert (out / "backbone/samples.png").is_file()
    for f in out.rglob("*.safetensors"):
        assert f.stat().st_size < 16 * 2**20


def test_exported_world_samples_through_the_pipeline(world):
    from models.pipeline import UniDiffuserT2I

    _, root = world
    pipe = UniDiffuserT2I.from_pretrained(root, device="cpu")
    (image,), = pipe(["a photo of a woman wearing a red hat"], n_per_prompt=1, steps=2, seed=1)
    assert image.size == (64, 64)


def test_a_finished_stage_only_reexports(world, capsys):
    out, root = world
    (root / "models/uvit_v1.safetensors").unlink()
    assert main(["train", "backbone", "--tiny", "--out", str(out), "--world", str(root)]) == 0
    assert (root / "models/uvit_v1.safetensors").is_file()
    assert "[backbone] step" not in capsys.readouterr().out  # no training step ran
