"""`python -m pretrain.world train clip|backbone --tiny`: run, resume from the checkpoint, export a world
folder that the real pipeline loads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from models.errors import UserError
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


def test_a_finished_stage_with_its_exports_travels_as_its_state_alone(world, tmp_path, capsys):
    out, root = world
    state = json.loads((out / "clip/checkpoint/state.json").read_text())
    assert state["done"] and state["optimizer_files"] is None  # nothing resumes a finished optimizer
    assert not list((out / "clip/checkpoint").glob("optimizer*"))
    moved = tmp_path / "runs"  # the next machine gets state.json and the exports, not the weights
    (moved / "clip/checkpoint").mkdir(parents=True)
    shutil.copy(out / "clip/checkpoint/state.json", moved / "clip/checkpoint/")
    assert main(["train", "clip", "--tiny", "--out", str(moved), "--world", str(root)]) == 0
    assert "[clip] finished at step 3" in capsys.readouterr().out
    with pytest.raises(UserError, match="another clip configuration"):  # still checked against the options
        main(["train", "clip", "--tiny", "--out", str(moved), "--world", str(root), "--hard-negatives"])


def test_backbone_writes_its_pixel_space_and_shape_first_and_continues_from_an_export(world, tmp_path):
    import torch

    from models.weights import read_state_dict
    from pretrain.world.backbone import BackboneStage
    from pretrain.world.common import StageOptions

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    opts = StageOptions(out=tmp_path / "runs", world=fresh, device=torch.device("cpu"), tiny=True,
                        init_from=root / "models/uvit_v1.safetensors")
    stage = BackboneStage(opts)  # before any step: what data_prep and a random-backbone benchmark need
    assert (fresh / "models/pixel_space.safetensors").is_file()
    configs = json.loads((fresh / "model_configs.json").read_text())
    assert configs["autoencoder"]["kind"] == "pixel_space" and "uvit" in configs
    exported = read_state_dict(root / "models/uvit_v1.safetensors")
    for k, v in stage.uvit.state_dict().items():  # the continued run starts from the export
        assert torch.equal(v, exported[k].float()), k
    assert stage.c.warmup_steps <= 100
    with pytest.raises(UserError, match="backbone, clip and attributes stages only"):
        main(["train", "faces", "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh),
              "--init-from", str(root / "models/uvit_v1.safetensors")])
    with pytest.raises(UserError, match="not a world-CLIP folder"):
        main(["train", "clip", "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh),
              "--init-from", str(root / "models/uvit_v1.safetensors")])


def test_final_conv_continues_an_export_without_it_unchanged_then_trains_and_loads(world, tmp_path):
    """The final conv (on by default) from weights without U-ViT's conv: the conv starts as the identity (the
    same outputs), the stage trains and exports it, and the pipeline loads the exported world with it;
    --no-final-conv leaves it out."""
    import torch

    from models.uvit import UViT
    from models.weights import read_state_dict, save_state_dict
    from pretrain.world.backbone import BackboneStage
    from pretrain.world.common import StageOptions, run_stage

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    without = {k: v for k, v in read_state_dict(root / "models/uvit_v1.safetensors").items()
               if not k.startswith("final_layer.")}  # an export made without the conv
    save_state_dict(without, tmp_path / "plain.safetensors")
    opts = StageOptions(out=tmp_path / "runs", world=fresh, device=torch.device("cpu"), tiny=True,
                        init_from=tmp_path / "plain.safetensors")
    stage = BackboneStage(opts)
    assert stage.uvit_config.conv and stage.uvit.final_layer is not None
    assert stage.c.eps_steps == 0  # a continuation has learnt to denoise: no plain noise MSE steps
    off = BackboneStage(dataclasses.replace(opts, out=tmp_path / "off", final_conv=False))
    assert not off.uvit_config.conv and off.uvit.final_layer is None
    plain = UViT(dataclasses.replace(stage.uvit_config, conv=False))
    plain.load_state_dict({k: v.float() for k, v in without.items()})
    c = stage.uvit_config
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, c.in_chans, c.img_size, c.img_size, generator=gen),
              torch.randn(2, 1, c.clip_img_dim, generator=gen),
              torch.randn(2, c.num_text_tokens, c.text_dim, generator=gen), torch.full((2,), 300.0),
              torch.zeros(2), torch.ones(2, dtype=torch.long))
    with torch.no_grad():
        for a, b in zip(stage.uvit.eval()(*inputs), plain.eval()(*inputs), strict=True):
            torch.testing.assert_close(a, b)
    stage.uvit.train()
    run_stage(stage)
    assert "final_layer.weight" in read_state_dict(fresh / "models/uvit_v1.safetensors")
    assert json.loads((fresh / "model_configs.json").read_text())["uvit"]["conv"] is True
    from models.pipeline import UniDiffuserT2I
    assert UniDiffuserT2I.from_pretrained(fresh, device=torch.device("cpu")).uvit.final_layer is not None
    for flag, only in (("--final-conv", "backbone stage only"), ("--compile", "backbone and autoencoder stages only")):
        with pytest.raises(UserError, match=only):
            main(["train", "clip", "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh), flag])
    compiled = BackboneStage(dataclasses.replace(opts, compile=True))  # compiles on CUDA only
    assert compiled.step_model is compiled.uvit


def test_batch_reuse_trains_several_steps_on_each_rendered_batch(world, tmp_path):
    """--batch-reuse R: steps kR .. kR+R-1 train on rendered batch k (rendered and conditioned once), the
    run's config records R, and resuming it without the flag is refused."""
    import torch

    from pretrain.world.backbone import BackboneStage
    from pretrain.world.common import StageOptions, run_stage

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    opts = StageOptions(out=tmp_path / "runs", world=fresh, device=torch.device("cpu"), tiny=True, batch_reuse=2,
                        total_steps=5)
    stage = BackboneStage(opts)
    asked = []
    get = stage.data.get
    stage.data.get = lambda k: asked.append(k) or get(k)
    seen = []
    optimize_on = stage.optimize_on
    stage.optimize_on = lambda pixels, *a, **kw: seen.append((pixels, kw["latent"])) or optimize_on(pixels, *a, **kw)
    run_stage(stage)
    assert asked == [0, 1, 2] and len(seen) == 5
    (p0, z0), (p1, z1), (p2, z2), (p3, z3) = seen[:4]
    assert p0 is p1 and p2 is p3 and not torch.equal(p1, p2)
    assert z0 is z1 and z2 is z3  # the latent made once a batch, too
    torch.testing.assert_close(p2, get(1).pixels)
    torch.testing.assert_close(z2, stage.pixel.latent(p2))
    state = json.loads((tmp_path / "runs/backbone/checkpoint/state.json").read_text())
    assert state["config"]["train"]["batch_reuse"] == 2
    with pytest.raises(UserError, match="another backbone configuration"):
        main(["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh),
              "--total-steps", "5"])
    for bad, match in ((["backbone", "--batch-reuse", "0"], "1 or more"), (["clip", "--batch-reuse", "2"],
                                                                          "backbone and autoencoder stages only")):
        with pytest.raises(UserError, match=match):
            main(["train", bad[0], "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh), *bad[1:]])


def test_patch_size_makes_a_new_backbone_of_that_shape(world, tmp_path):
    """--patch-size P: a new run's UViT has P-pixel patches, exports them in model_configs.json and loads in the
    pipeline; resuming without the flag, continuing exported weights with it, a P that does not tile the
    images and another stage are refused with one line each."""
    import torch

    from models.pipeline import UniDiffuserT2I
    from pretrain.world.backbone import BackboneConfig

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    patch = BackboneConfig.tiny().patch_size // 2
    args = ["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh)]
    assert main([*args, "--patch-size", str(patch)]) == 0
    assert json.loads((fresh / "model_configs.json").read_text())["uvit"]["patch_size"] == patch
    uvit = UniDiffuserT2I.from_pretrained(fresh, device=torch.device("cpu")).uvit
    assert uvit.config.patch_size == patch and uvit.patch_embed.proj.kernel_size == (patch, patch)
    with pytest.raises(UserError, match="another backbone configuration"):
        main(args)  # the same run without --patch-size
    for extra, match in ((["--patch-size", "5"], "does not tile"),
                         (["--patch-size", "2", "--init-from", str(root / "models/uvit_v1.safetensors")],
                          "keeps the exported weights' patch size")):
        with pytest.raises(UserError, match=match):
            main(["train", "backbone", "--tiny", "--out", str(tmp_path / "other"), "--world", str(fresh), *extra])
    with pytest.raises(UserError, match="backbone stage only"):
        main(["train", "clip", "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh), "--patch-size", "2"])


def test_level_gains_train_on_and_export_a_pixel_space_with_those_band_gains(world, tmp_path, capsys, monkeypatch):
    """--level-gains: the run noises G x (the pixel space's latent, not 0.3 x), exports that pixel space in
    model_configs.json, and the pipeline loads it; too many bands for the image, bad numbers and another
    stage are refused with one line each."""
    import torch

    from models.pipeline import UniDiffuserT2I
    from pretrain.world.backbone import BackboneStage

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    args = ["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh)]
    seen = []
    optimize = BackboneStage.optimize_on

    def spy(self, pixels, *a, **kw):
        seen.append((pixels, kw["latent"]))
        return optimize(self, pixels, *a, **kw)

    monkeypatch.setattr(BackboneStage, "optimize_on", spy)
    assert main([*args, "--level-gains", "1,0.6,0.3"]) == 0
    monkeypatch.undo()
    pixels, z0 = seen[0]
    assert not torch.allclose(z0, 0.3 * pixels) and torch.allclose(z0.mean(dim=(2, 3)), 0.3 * pixels.mean(dim=(2, 3)),
                                                                   atol=1e-5)  # the block means keep 0.3
    entry = json.loads((fresh / "model_configs.json").read_text())["autoencoder"]
    assert entry["level_gains"] == [1.0, 0.6, 0.3] and entry["signal_scale"] == 1.0
    pipe = UniDiffuserT2I.from_pretrained(fresh, device=torch.device("cpu"))
    assert pipe.autoencoder.config.level_gains == (1.0, 0.6, 0.3)
    other = ["train", "backbone", "--tiny", "--out", str(tmp_path / "other"), "--world", str(fresh), "--level-gains"]
    with pytest.raises(UserError, match="multiples of"):
        main([*other, ",".join(["1"] * 12)])
    for bad, match in (("1,0", "positive"), ("1,x", "numbers")):
        with pytest.raises(SystemExit):
            main([*other, bad])
        assert match in capsys.readouterr().err
    with pytest.raises(UserError, match="backbone stage only"):
        main(["train", "clip", "--tiny", "--out", str(tmp_path / "r"), "--world", str(fresh), "--level-gains", "1"])
    # a continuation trains on the pixel space exported beside its weights, unless --level-gains says otherwise
    configs = json.loads((fresh / "model_configs.json").read_text())
    configs["autoencoder"] = {**configs["autoencoder"], "level_gains": [], "signal_scale": 0.25}  # one gain
    (fresh / "model_configs.json").write_text(json.dumps(configs))
    from pretrain.world.common import StageOptions
    opts = StageOptions(out=tmp_path / "cont", world=tmp_path / "cont_world", device=torch.device("cpu"), tiny=True,
                        init_from=fresh / "models/uvit_v1.safetensors")
    shutil.copytree(root / "world_clip", opts.world / "world_clip")
    kept = BackboneStage(opts)
    assert kept.c.level_gains == () and kept.pixel.config.signal_scale == 0.25
    told = BackboneStage(dataclasses.replace(opts, level_gains=(1.0, 0.5)))
    assert told.pixel.config.level_gains == (1.0, 0.5)
    (fresh / "model_configs.json").write_text("{not json")
    with pytest.raises(UserError, match="model_configs.json is not valid JSON"):  # models.paths.read_model_configs
        BackboneStage(opts)


def test_eps_steps_weight_the_first_steps_plainly_then_the_runs_weighting(world, tmp_path, monkeypatch):
    """--eps-steps N: steps 0 .. N-1 use the plain noise MSE, the rest the config's "v" weighting; the count is
    part of the run's config. Refused below 0 and for other stages."""
    import torch

    from encoder import objective
    from pretrain.world import backbone as B

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    asked = []
    weights = objective.timestep_weights

    def spy(schedule, n, weighting):
        asked.append(weighting)
        return weights(schedule, n, weighting)

    monkeypatch.setattr(B, "timestep_weights", spy)
    args = ["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh), "--total-steps", "4"]
    assert main([*args, "--eps-steps", "2"]) == 0
    assert asked == ["eps", "eps", "v", "v"]
    state = json.loads((tmp_path / "runs/backbone/checkpoint/state.json").read_text())
    assert state["config"]["train"]["eps_steps"] == 2
    # the weighting changes the loss, not only its name: the same batch and noise weigh differently
    stage = B.BackboneStage(B.StageOptions(out=tmp_path / "r", world=fresh, device=torch.device("cpu"), tiny=True))
    u = stage.uvit_config
    z0, clip0, text0 = (torch.randn(2, 3, 64, 64), torch.randn(2, 1, u.clip_img_dim),
                        torch.randn(2, u.num_text_tokens, u.text_dim))
    loss = {w: B.joint_loss(stage.uvit, z0, clip0, text0, stage.noise, stage.c, torch.Generator().manual_seed(0),
                            w)[1]["loss_z"] for w in ("eps", "v")}
    assert not torch.allclose(loss["eps"], loss["v"])
    # a new run without the flag takes its config's "eps" steps; --eps-steps 0 turns them off
    assert stage.c.eps_steps == B.BackboneConfig.tiny().eps_steps > 0
    asked.clear()
    assert main([*args[:4], str(tmp_path / "runs0"), *args[5:], "--eps-steps", "0"]) == 0
    assert asked == ["v"] * 4
    with pytest.raises(UserError, match="0 or more"):
        main([*args, "--eps-steps", "-1"])
    with pytest.raises(UserError, match="backbone stage only"):
        main(["train", "clip", "--tiny", "--out", str(tmp_path / "r2"), "--world", str(fresh), "--eps-steps", "1"])


def test_lr_sets_the_backbones_peak_learning_rate(world, tmp_path):
    """--lr: the backbone's schedule peaks at it (part of the run's config); refused out of range and for other
    stages."""
    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    args = ["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh), "--total-steps", "3"]
    assert main([*args, "--lr", "1e-3"]) == 0
    state = json.loads((tmp_path / "runs/backbone/checkpoint/state.json").read_text())
    assert state["config"]["train"]["lr"] == 1e-3
    # the whole schedule (warm-up, cosine decay) scales with it
    import torch

    from pretrain.world.backbone import BackboneStage, StageOptions

    opts = StageOptions(out=tmp_path / "r", world=fresh, device=torch.device("cpu"), tiny=True, total_steps=10)
    default, raised = BackboneStage(opts), BackboneStage(dataclasses.replace(opts, lr=1e-3))
    assert [raised.lr(s) for s in range(10)] == pytest.approx([default.lr(s) * 1e-3 / default.c.lr for s in range(10)])
    assert raised.lr(5) > default.lr(5) > 0
    with pytest.raises(UserError, match="between 0 and 1"):
        main([*args, "--lr", "0"])
    with pytest.raises(UserError, match="backbone stage only"):
        main(["train", "clip", "--tiny", "--out", str(tmp_path / "r2"), "--world", str(fresh), "--lr", "1e-3"])


def test_random_backbone_takes_the_shape_of_a_named_weights_folder(world):
    from pretrain.config import PretrainConfig
    from pretrain.model import backbone_config

    _, root = world
    config = PretrainConfig(random_backbone=True, weights=str(root))
    assert backbone_config(config).num_text_tokens == 24  # the world's, not v1's 77
    assert backbone_config(PretrainConfig(random_backbone=True)).num_text_tokens == 77


def test_render_workers_draw_the_same_batches_as_the_training_device():
    """--render-workers: CPU processes render step k's batch ahead of time; it is the batch the training device
    would render (same items and captions, same pixels on the CPU), also after a jump ahead, and closing ends
    the processes (a later batch starts them again)."""
    import numpy as np
    import torch

    from pretrain.world.common import WorldData

    here = WorldData(0, "backbone", 4, torch.device("cpu"))
    there = WorldData(0, "backbone", 4, torch.device("cpu"), render_workers=2)
    try:
        for step in (0, 1, 5, 6):
            a, b = here.make(step), there.get(step)
            assert b.captions == a.captions and np.array_equal(b.renders.identities, a.renders.identities)
            torch.testing.assert_close(b.pixels, a.pixels)
            assert sorted(there._pending) == [step + 1, step + 2]  # the next P steps are being rendered
        there.close()
        assert there._pool is None and not there._pending
        torch.testing.assert_close(there.get(2).pixels, here.make(2).pixels)
    finally:
        there.close()
        here.close()
    with pytest.raises(UserError, match="backbone and autoencoder stages only"):
        main(["train", "clip", "--tiny", "--render-workers", "2"])


def test_face_weight_map_weighs_the_widened_face_box_and_averages_one():
    """face_weight_map: `weight` times the rest inside the face box widened by FACE_MARGIN, mean 1 per image."""
    import torch

    from pretrain.world.common import FACE_MARGIN, face_weight_map

    boxes = torch.tensor([[16.0, 20.0, 32.0, 44.0], [0.0, 0.0, 64.0, 64.0]])
    w = face_weight_map(boxes, 64, 4.0)
    assert w.shape == (2, 1, 64, 64)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(2))
    first = w[0, 0]
    # x widened by 0.25 * 16 = 4 px, y by 0.25 * 24 = 6 px: pixel centres in [12, 36] x [14, 50]
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[14:50, 12:36] = True
    assert FACE_MARGIN == 0.25
    assert torch.allclose(first[inside], first[inside][0]) and torch.allclose(first[~inside], first[~inside][0])
    torch.testing.assert_close(first[inside][0] / first[~inside][0], torch.tensor(4.0))
    torch.testing.assert_close(w[1], torch.ones(1, 64, 64))  # the face fills the image: the plain mean


def test_face_weight_weighs_the_image_term_on_the_face(world, tmp_path, monkeypatch):
    """--face-weight W: the stage passes each batch's face_weight_map to the loss (none at the default 1), a map
    of ones leaves the loss as it was and another changes it; part of the run's config; refused when not
    positive and for other stages."""
    import torch

    from pretrain.world import backbone as B
    from pretrain.world import common as C

    _, root = world
    fresh = tmp_path / "world"
    shutil.copytree(root / "world_clip", fresh / "world_clip")
    seen = []
    optimize = B.BackboneStage.optimize_on

    def spy(self, pixels, clip0, text0, generator, model=None, weighting=None, pixel_weight=None, latent=None):
        seen.append((self.data.get(0).renders.boxes, pixel_weight))
        return optimize(self, pixels, clip0, text0, generator, model, weighting, pixel_weight, latent)

    monkeypatch.setattr(B.BackboneStage, "optimize_on", spy)
    args = ["train", "backbone", "--tiny", "--out", str(tmp_path / "runs"), "--world", str(fresh), "--total-steps", "1"]
    assert main([*args, "--face-weight", "3"]) == 0
    boxes, weight = seen[0]
    torch.testing.assert_close(weight, C.face_weight_map(torch.from_numpy(boxes), 64, 3.0))
    state = json.loads((tmp_path / "runs/backbone/checkpoint/state.json").read_text())
    assert state["config"]["train"]["face_weight"] == 3.0
    assert main([*args[:4], str(tmp_path / "runs1"), *args[5:]]) == 0
    assert seen[1][1] is None  # the default: the plain mean
    monkeypatch.undo()
    stage = B.BackboneStage(B.StageOptions(out=tmp_path / "r", world=fresh, device=torch.device("cpu"), tiny=True))
    u = stage.uvit_config
    z0, clip0, text0 = (torch.randn(2, 3, 64, 64), torch.randn(2, 1, u.clip_img_dim),
                        torch.randn(2, u.num_text_tokens, u.text_dim))

    def loss_z(pixel_weight):
        return B.joint_loss(stage.uvit, z0, clip0, text0, stage.noise, stage.c, torch.Generator().manual_seed(0),
                            pixel_weight=pixel_weight)[1]["loss_z"]

    face = C.face_weight_map(torch.tensor([[16.0, 16.0, 40.0, 48.0]] * 2), 64, 5.0)
    torch.testing.assert_close(loss_z(torch.ones(2, 1, 64, 64)), loss_z(None))
    assert not torch.allclose(loss_z(face), loss_z(None))
    for bad, match in ((["backbone", "--face-weight", "0"], "positive"),
                       (["clip", "--face-weight", "2"], "backbone and autoencoder stages only")):
        with pytest.raises(UserError, match=match):
            main(["train", bad[0], "--tiny", "--out", str(tmp_path / "r2"), "--world", str(fresh), *bad[1:]])


def test_hard_negatives_change_one_stated_attribute():
    """hard_negative: the caption's statement with exactly one attribute changed (a hat taken off loses its colour,
    one put on gets none stated), None when the caption states nothing that can change."""
    import numpy as np

    from data_prep.faceworld.attributes import ANY_HAT, CLASS_WORDS, caption, parse_caption, sample_attributes
    from pretrain.world.clip import hard_negative

    rng = np.random.default_rng(0)
    attrs = sample_attributes(0, np.arange(300), np.zeros(300, dtype=np.int64), avoid_held_out=False)
    changed = set()
    for i, a in enumerate(attrs):
        word = CLASS_WORDS[i % 4]
        text = caption(a, word, rng)
        neg = hard_negative(text, a, word, rng)
        stated = parse_caption(text)
        if neg is None:
            assert not [n for n in stated if not (n == "hat" and stated[n] == ANY_HAT)]
            continue
        other = parse_caption(neg)
        diff = {n for n in set(stated) | set(other) if stated.get(n) != other.get(n)}
        assert diff, (text, neg)
        assert len(diff - {"hat_color"}) == 1 or diff == {"hat_color"}, (text, neg)
        if "hat_color" in diff and "hat" in diff:  # a hat taken off, or put on: the colour goes with it
            assert other["hat"] == "none" or stated["hat"] == "none", (text, neg)
        changed |= diff
    assert {"scene", "expression", "glasses", "hat", "clothing", "style"} <= changed
    assert hard_negative("a photo of a man", {**attrs[0], "style": "photo"}, "man", rng) is not None  # style
    assert hard_negative("a man", attrs[0], "man", rng) is None


def test_contrastive_loss_with_negatives():
    """Without negatives the loss is symmetric InfoNCE; a negative that equals an image's embedding raises the
    loss; a negative whose text is another image's caption counts as that image's positive."""
    import torch
    import torch.nn.functional as F

    from pretrain.world.clip import contrastive_loss

    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(0.0)
    eye = torch.eye(4, dtype=torch.bool)
    loss, _ = contrastive_loss(img, txt, scale, eye)
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    want = 0.5 * (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4)))
    torch.testing.assert_close(loss, want)
    same = torch.cat([eye, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    harder, _ = contrastive_loss(img, txt, scale, same, img[:2].clone())
    assert harder > loss
    same[3, 4] = True  # negative 0 is image 3's caption too
    _, acc = contrastive_loss(img, img.clone(), torch.tensor(4.0), same, img[3:4].repeat(2, 1))
    assert acc == 1.0


def test_clip_stage_hard_negatives_and_init_from(world, tmp_path):
    """--hard-negatives trains (part of the run's config); --init-from starts the clip stage from an exported
    world-CLIP folder, its tokenizer included; --hard-negatives is refused for other stages."""
    import torch

    from models.world_clip import load_world_clip

    _, root = world
    fresh = tmp_path / "world"
    args = ["train", "clip", "--tiny", "--world", str(fresh), "--total-steps", "2"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--hard-negatives"]) == 0
    state = json.loads((tmp_path / "runs/clip/checkpoint/state.json").read_text())
    assert state["config"]["hard_negatives"] is True and state["done"]
    from pretrain.world.clip import ClipStage
    from pretrain.world.common import StageOptions

    stage = ClipStage(StageOptions(out=tmp_path / "r", world=fresh, device=torch.device("cpu"), tiny=True,
                                   init_from=root / "world_clip"))
    tokenizer, exported = load_world_clip(root / "world_clip")
    assert stage.tokenizer.vocab == tokenizer.vocab
    for k, v in exported.state_dict().items():
        assert torch.equal(stage.model.state_dict()[k], v.float()), k
    assert main([*args, "--out", str(tmp_path / "runs2"), "--init-from", str(root / "world_clip"),
                 "--batch-size", "4"]) == 0
    state = json.loads((tmp_path / "runs2/clip/checkpoint/state.json").read_text())
    assert state["config"]["batch_size"] == 4 and state["config"]["init_from"] == str(root / "world_clip")
    for bad, match in ((["clip", "--batch-size", "1"], "2 or more"), (["backbone", "--batch-size", "4"],
                                                                      "clip, autoencoder and attributes stages only")):
        with pytest.raises(UserError, match=match):
            main(["train", bad[0], "--tiny", "--out", str(tmp_path / "r4"), "--world", str(fresh), *bad[1:]])
    with pytest.raises(UserError, match="clip stage only"):
        main(["train", "backbone", "--tiny", "--out", str(tmp_path / "r3"), "--world", str(fresh),
              "--hard-negatives"])
