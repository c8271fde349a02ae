"""pretrain.world.attributes: the tiny stage trains, resumes and exports; the export loads and reads every attribute."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.faceworld.attributes import ANY_HAT, ATTRIBUTES, CLASS_WORDS
from models.errors import UserError
from pretrain.world.attributes import (
    CLASS_WORD,
    IGNORE,
    AttributeClassifier,
    AttributeNet,
    AttributeNetConfig,
    AttributeStage,
    AttributeTrainConfig,
    attributes_found,
    augment,
    targets,
    vocabularies,
)
from pretrain.world.common import StageOptions, run_stage


def test_heads_follow_the_renderer():
    voc = vocabularies()
    assert voc[CLASS_WORD] == tuple(CLASS_WORDS)
    assert {k: v for k, v in voc.items() if k != CLASS_WORD} == {k: tuple(v) for k, v in ATTRIBUTES.items()}
    net = AttributeNet(AttributeNetConfig.world())
    out = net.eval()(torch.zeros(2, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in out.items()} == {k: len(v) for k, v in voc.items()}
    # the exported file (float16) stays under 2 MB
    assert 2 * sum(p.numel() for p in net.parameters()) + 4096 < 2e6


def test_targets_ignore_hat_colour_without_a_hat():
    cfg = AttributeNetConfig.tiny()
    a = {"scene": "snow", "hat": "none", "hat_color": None, "glasses": "sunglasses", "clothing": "red",
         "expression": "smiling", "style": "sketch"}
    b = {**a, "hat": "cap", "hat_color": "blue"}
    y = targets(["girl", "man"], [a, b], cfg)
    assert y["hat_color"].tolist() == [IGNORE, ATTRIBUTES["hat_color"].index("blue")]
    assert y[CLASS_WORD].tolist() == [CLASS_WORDS.index("girl"), CLASS_WORDS.index("man")]
    assert y["glasses"].tolist() == [2, 2]


def test_augment_keeps_range_and_shape():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))  # from the generator alone


def test_attributes_found():
    pred = {"hat": "cap", "hat_color": "red", "glasses": "none", CLASS_WORD: "man"}
    assert attributes_found(pred, {"hat": ANY_HAT, "hat_color": "red"}) == {"hat": True, "hat_color": True}
    assert attributes_found(pred, {"hat": "top hat", "glasses": "none"}) == {"hat": False, "glasses": True}
    assert attributes_found({**pred, "hat": "none"}, {"hat": ANY_HAT}) == {"hat": False}


def test_tiny_stage_resumes_exports_and_predicts(tmp_path: Path, one_thread):
    opts = StageOptions(out=tmp_path / "runs", world=tmp_path / "world", device=torch.device("cpu"), tiny=True,
                        log_every=1)
    first = run_stage(AttributeStage(dataclasses.replace(opts, max_steps=2)))
    assert first["step"] == 2 and not first["done"] and first["exported"] == []
    state = json.loads((tmp_path / "runs/attributes/checkpoint/state.json").read_text())
    assert state["step"] == 2 and state["optimizer_files"]
    # --steps 0 --export-when-stopped: the checkpoint exported as it stands, without a step or a new checkpoint
    as_is = run_stage(AttributeStage(dataclasses.replace(opts, max_steps=0, export_when_stopped=True)))
    assert as_is["step"] == 2 and as_is["steps_run"] == 0 and not as_is["done"]
    assert tmp_path / "world/attributes/attributes.safetensors" in as_is["exported"]
    assert json.loads((tmp_path / "runs/attributes/checkpoint/state.json").read_text()) == state
    with pytest.raises(UserError, match="nothing to export: no checkpoint of stage 'attributes'"):
        run_stage(AttributeStage(dataclasses.replace(opts, out=tmp_path / "empty", max_steps=0,
                                                     export_when_stopped=True)))
    # stopped short again, but asked to export: the weights as they are, and the checkpoint still resumes
    stopped = run_stage(AttributeStage(dataclasses.replace(opts, max_steps=1, export_when_stopped=True)))
    assert stopped["step"] == 3 and not stopped["done"]
    assert tmp_path / "world/attributes/attributes.safetensors" in stopped["exported"]
    second = run_stage(AttributeStage(opts))
    assert second["done"] and second["steps_run"] == AttributeStage(opts).total_steps - 3
    folder = tmp_path / "world/attributes"
    assert sorted(p.name for p in folder.iterdir()) == ["attributes.safetensors", "config.json"]
    info = json.loads((folder / "config.json").read_text())
    assert set(info["validation_accuracy"]) == set(vocabularies())
    # it trains on every combination, the held-out pairs included (it scores text-to-image on them)
    assert AttributeStage(opts).data.every_pair and info["trained"]["held_out_pairs"] is True

    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(folder / "attributes.safetensors")).values()
               if v.is_floating_point())
    classifier = AttributeClassifier.from_folder(folder)
    from data_prep.faceworld.render import FaceWorld

    batch = FaceWorld(0, 64).render(np.array([1_100_000, 1_100_001, 1_100_002]), 0)
    preds = classifier.predict(batch.images)
    voc = vocabularies()
    for p in preds:
        assert set(p) == set(voc)
        assert all(p[k] in voc[k] for k in voc if not (k == "hat_color" and p["hat"] == "none"))
    # --init-from continues the export: its weights to start from, a quarter of the rate; the export says so
    more = dataclasses.replace(opts, out=tmp_path / "runs2", world=tmp_path / "world2", init_from=folder,
                               batch_size=4, total_steps=2)
    cont = AttributeStage(more)
    start = {k: v.float() for k, v in classifier.net.state_dict().items()}
    assert all(torch.equal(start[k], v.float()) for k, v in cont.net.state_dict().items())
    assert cont.batch_size == 4 and cont.base_lr == AttributeTrainConfig.tiny().lr / 4 and cont.net.training
    assert run_stage(cont)["done"]
    assert json.loads((tmp_path / "world2/attributes/config.json").read_text())["trained"]["init_from"] == str(folder)
    # float images in [0, 1] (the pipeline's decode) give the same answers as uint8 renders
    floats = batch.images.permute(0, 3, 1, 2).float() / 255.0
    assert classifier.predict(floats) == preds
    # a finished stage runs no step; a classifier of other vocabularies is refused
    assert run_stage(AttributeStage(opts))["steps_run"] == 0
    info["config"]["heads"][1][1] = ["beach"]
    (folder / "config.json").write_text(json.dumps(info))
    from models.paths import WeightsError

    with pytest.raises(WeightsError, match="vocabularies"):
        AttributeClassifier.from_folder(folder)


def test_cli_registers_the_stage():
    from pretrain.world.__main__ import STAGES, stage_class

    assert "attributes" in STAGES and stage_class("attributes") is AttributeStage
