"""`python -m pretrain.world train autoencoder --tiny` and `train backbone --space autoencoder`: the world's
AutoencoderKL is trained, exported with its scale factor, and a backbone trained in its latent exports a world
folder that the pipeline samples through that autoencoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.errors import UserError
from pretrain.world.__main__ import main
from tests.tiny_world import make_tiny_world


@pytest.fixture(scope="module")
def latent_world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("latent_world")
    out, world = root / "runs", make_tiny_world(root / "world")
    args = ["--tiny", "--out", str(out), "--world", str(world)]
    assert main(["train", "autoencoder", *args]) == 0
    assert main(["train", "backbone", *args, "--space", "autoencoder"]) == 0
    return out, world


def test_autoencoder_stage_exports_its_config_weights_and_scale(latent_world):
    from models.autoencoder import AutoencoderConfig
    from pretrain.world.autoencoder import load_world_autoencoder

    out, world = latent_world
    info = json.loads((world / "autoencoder/config.json").read_text())
    config = AutoencoderConfig.from_dict(info["autoencoder"])
    assert info["format"] == "world-autoencoder" and config.downsample_factor == 2  # the tiny config
    assert config.scale_factor == 1.0 and len(info["latent_standardised"]["std"]) == config.embed_dim  # folded in
    model = load_world_autoencoder(world)
    assert model.config == config and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert model.decode(model.encode(x)).shape == (2, 3, 64, 64)
    assert (out / "autoencoder/reconstructions.png").is_file()


def test_backbone_in_the_autoencoder_latent_exports_a_world_the_pipeline_samples(latent_world):
    from models.autoencoder import AutoencoderKL
    from models.pipeline import UniDiffuserT2I

    out, world = latent_world
    assert (world / "models/autoencoder_kl.safetensors").is_file()
    assert not (world / "models/pixel_space.safetensors").exists()  # models.paths would find the stale one too
    configs = json.loads((world / "model_configs.json").read_text())
    ae = json.loads((world / "autoencoder/config.json").read_text())["autoencoder"]
    assert configs["autoencoder"] == ae
    # 64 px renders -> 32 x 32 x 4 latents; the tiny pixel patch (16) becomes 8: the same 16 image tokens
    assert (configs["uvit"]["img_size"], configs["uvit"]["in_chans"], configs["uvit"]["patch_size"]) == (32, 4, 8)
    state = json.loads((out / "backbone/checkpoint/state.json").read_text())
    assert state["done"]
    pipe = UniDiffuserT2I.from_pretrained(world, device="cpu")
    assert isinstance(pipe.autoencoder, AutoencoderKL) and pipe.image_size == 64
    (image,), = pipe(["a photo of a man in the snow"], n_per_prompt=1, steps=2, seed=1)
    assert image.size == (64, 64)


def test_a_continued_run_keeps_the_latent_space_and_pixel_space_comes_back(latent_world, tmp_path, capsys):
    out, world = latent_world
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    args = ["--tiny", "--world", str(copy), "--init-from", str(world / "models/uvit_v1.safetensors")]
    assert main(["train", "backbone", "--out", str(tmp_path / "a"), *args]) == 0
    configs = json.loads((copy / "model_configs.json").read_text())
    assert "kind" not in configs["autoencoder"] and configs["uvit"]["in_chans"] == 4
    # a new pixel-space run in the same folder puts the pixel space back and removes the autoencoder's file
    assert main(["train", "backbone", "--tiny", "--world", str(copy), "--out", str(tmp_path / "b")]) == 0
    configs = json.loads((copy / "model_configs.json").read_text())
    assert configs["autoencoder"]["kind"] == "pixel_space" and configs["uvit"]["in_chans"] == 3
    assert (copy / "models/pixel_space.safetensors").is_file()
    assert not (copy / "models/autoencoder_kl.safetensors").exists()


def test_autoencoder_space_refuses_pixel_flags_and_needs_the_stage(latent_world, tmp_path):
    _, world = latent_world
    base = ["train", "backbone", "--tiny", "--out", str(tmp_path / "r"), "--space", "autoencoder"]
    with pytest.raises(UserError, match="pixel space only"):
        main([*base, "--world", str(world), "--level-gains", "1,0.5"])
    bare = make_tiny_world(tmp_path / "bare")
    with pytest.raises(UserError, match="no world autoencoder") as e:
        main([*base, "--world", str(bare)])
    assert "train autoencoder" in e.value.hint
    with pytest.raises(UserError, match="backbone stage only"):
        main(["train", "clip", "--tiny", "--space", "autoencoder"])


def test_autoencoder_batch_reuse_and_face_weight(tmp_path, monkeypatch):
    """--batch-reuse R: R steps train on each rendered batch; --face-weight W: the L1 is weighed by the face
    box map of that batch (the backbone's face_weight_map), none at the default."""
    from pretrain.world import autoencoder as A
    from pretrain.world.common import face_weight_map

    seen = []
    real = A.reconstruction_loss

    def spy(model, pixels, kl_weight, generator, pixel_weight=None):
        seen.append((pixels, pixel_weight))
        return real(model, pixels, kl_weight, generator, pixel_weight)

    monkeypatch.setattr(A, "reconstruction_loss", spy)
    args = ["train", "autoencoder", "--tiny", "--out", str(tmp_path / "r"), "--world", str(tmp_path / "w"),
            "--total-steps", "4", "--batch-reuse", "2", "--face-weight", "4"]
    assert main(args) == 0
    assert len(seen) == 4 and seen[0][0] is seen[1][0] and seen[2][0] is seen[3][0]
    assert not torch.equal(seen[1][0], seen[2][0])
    data = A.WorldData(0, "autoencoder", 4, torch.device("cpu"))
    boxes = torch.from_numpy(data.make(1).renders.boxes)
    torch.testing.assert_close(seen[2][1], face_weight_map(boxes, 64, 4.0))
    state = json.loads((tmp_path / "r/autoencoder/checkpoint/state.json").read_text())
    assert state["config"]["train"]["batch_reuse"] == 2 and state["config"]["train"]["face_weight"] == 4.0
    seen.clear()
    assert main(["train", "autoencoder", "--tiny", "--out", str(tmp_path / "r2"), "--world", str(tmp_path / "w2")]) == 0
    assert all(w is None for _, w in seen)


def test_reconstruction_measures_the_autoencoder_stage_s_export_else_the_pipeline_s_space(latent_world, tmp_path):
    from models.autoencoder import AutoencoderKL
    from models.pixel_space import PixelSpace
    from pretrain.world.evaluate import world_latent_space

    _, world = latent_world
    ae, where = world_latent_space(world, torch.device("cpu"))
    assert isinstance(ae, AutoencoderKL) and where == str(world / "autoencoder")
    pixel, where = world_latent_space(make_tiny_world(tmp_path / "pixel"), torch.device("cpu"))
    assert isinstance(pixel, PixelSpace) and where.endswith("pixel_space.safetensors")


def test_downsample_and_latent_channels_shape_the_latent_and_the_backbone_follows(tmp_path):
    """--downsample 4 --latent-channels 3 on the tiny config (2x, 4 channels): 16 x 16 x 3 latents, recorded in
    the run's config and the export; a backbone in that latent takes 3 channels and a patch of 16 // 4."""
    from models.autoencoder import AutoencoderConfig

    out, world = tmp_path / "runs", make_tiny_world(tmp_path / "world")
    args = ["--tiny", "--out", str(out), "--world", str(world)]
    assert main(["train", "autoencoder", *args, "--downsample", "4", "--latent-channels", "3"]) == 0
    config = AutoencoderConfig.from_dict(json.loads((world / "autoencoder/config.json").read_text())["autoencoder"])
    assert (config.downsample_factor, config.embed_dim) == (4, 3)
    assert json.loads((world / "renderer.json").read_text()) == {"version": "faceworld-2"}  # every export
    state = json.loads((out / "autoencoder/checkpoint/state.json").read_text())
    assert state["config"]["train"]["ch_mult"] == [1, 2, 2] and state["config"]["train"]["embed_dim"] == 3
    assert main(["train", "backbone", *args, "--space", "autoencoder"]) == 0
    uvit = json.loads((world / "model_configs.json").read_text())["uvit"]
    assert (uvit["img_size"], uvit["in_chans"], uvit["patch_size"]) == (16, 3, 4)
    with pytest.raises(SystemExit):  # argparse: one usage line
        main(["train", "autoencoder", *args, "--downsample", "3"])
    from pretrain.world.autoencoder import AutoencoderStage
    from pretrain.world.common import StageOptions

    stage = AutoencoderStage(StageOptions(out=out, world=world, device=torch.device("cpu"), tiny=True, compile=True))
    assert stage.model.encoder._compiled_call_impl is None  # --compile compiles on CUDA only
    keys = list(stage.model.state_dict())
    stage.compile_model()  # in place: the modules' calls compile lazily, their weights and keys stay
    assert stage.model.encoder._compiled_call_impl is not None and stage.model.decoder._compiled_call_impl is not None
    assert list(stage.model.state_dict()) == keys
    with pytest.raises(UserError, match="autoencoder stage only"):
        main(["train", "backbone", *args, "--latent-channels", "8"])


def test_standardised_whitens_each_latent_channel_and_keeps_the_reconstructions():
    """standardised folds per-channel statistics into the 1x1 convolutions: on the batch they were measured on,
    every channel of latent(x) has mean 0 and spread 1, and decode(latent(x)) and the sampled latent's spread
    are what they were; the original model is left alone."""
    from models.autoencoder import AutoencoderConfig, AutoencoderKL
    from pretrain.world.autoencoder import standardised

    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=3,
                                            resolution=32, scale_factor=0.7)).eval()
    with torch.no_grad():
        model.quant_conv.bias[:3] += torch.tensor([2.0, -3.0, 0.5])  # channels off zero
        x = torch.rand(6, 3, 32, 32) * 2 - 1
        raw = model.encode_moments(x)[:, :3]
        mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))
        before = model.decode(model.latent(x))
        white = standardised(model, mean, std)
        z = white.latent(x)
        torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(white.decode(z), before, atol=1e-4, rtol=1e-4)
        # the posterior's spread is scaled with the mean: a sample differs from the mean by the old sample's / std
        _, lv0 = model.encode_moments(x).chunk(2, dim=1)
        _, lv1 = white.encode_moments(x).chunk(2, dim=1)
        torch.testing.assert_close(lv1, lv0 - 2 * torch.log(std)[None, :, None, None], atol=1e-4, rtol=1e-4)
    assert white.config.scale_factor == 1.0 and model.config.scale_factor == 0.7
    torch.testing.assert_close(model.decode(model.latent(x)), before)  # untouched


def test_standardise_export_redoes_an_older_export_once(latent_world, tmp_path):
    """An export made before standardising (scale factor, no statistics) is exported again standardised: the
    same reconstructions, its record kept; a second time is refused."""
    from models.autoencoder import AutoencoderKL
    from models.weights import save_state_dict
    from pretrain.world.autoencoder import load_world_autoencoder, standardise_export

    _, world = latent_world
    old = tmp_path / "world"
    (old / "autoencoder").mkdir(parents=True)
    info = json.loads((world / "autoencoder/config.json").read_text())
    model = load_world_autoencoder(world)
    # the same network as an old-style export: its latent scaled by one factor, with no statistics folded in
    info["autoencoder"]["scale_factor"] = 0.5
    info.pop("latent_standardised")
    (old / "autoencoder/config.json").write_text(json.dumps(info))
    save_state_dict({k: v.half() for k, v in model.state_dict().items()}, old / "autoencoder/model.safetensors")
    before = load_world_autoencoder(old)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    standardise_export(old, batches=1)
    after = load_world_autoencoder(old)
    redone = json.loads((old / "autoencoder/config.json").read_text())
    assert redone["autoencoder"]["scale_factor"] == 1.0 and redone["train"] == info["train"]
    assert redone["standardised_after_export"]["previous_scale_factor"] == 0.5
    assert isinstance(after, AutoencoderKL)
    with torch.no_grad():
        torch.testing.assert_close(after.decode(after.latent(x)), before.decode(before.latent(x)), atol=2e-2, rtol=0)
    with pytest.raises(UserError, match="already standardised"):
        standardise_export(old, batches=1)


def test_face_weight_in_the_latent_weighs_the_cells_the_face_box_maps_to(latent_world, tmp_path):
    """--face-weight with --space autoencoder: the image term's weights are face_weight_map over the latent's
    cells (the tiny autoencoder's 32 x 32), the face boxes scaled from pixels to cells."""
    from pretrain.world import backbone as B
    from pretrain.world.common import StageOptions, face_weight_map

    _, world = latent_world
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    stage = B.BackboneStage(StageOptions(out=tmp_path / "r", world=copy, device=torch.device("cpu"), tiny=True,
                                         space="autoencoder", face_weight=4.0))
    pixels, z0, _, _, weights = stage.conditioned_batch(0)
    boxes = torch.from_numpy(stage.data.get(0).renders.boxes)
    assert z0.shape[-1] == 32 and weights.shape == (pixels.shape[0], 1, 32, 32)
    torch.testing.assert_close(weights, face_weight_map(boxes * 0.5, 32, 4.0))
    assert stage.train_step(0, torch.Generator().manual_seed(0))["loss"].isfinite()
