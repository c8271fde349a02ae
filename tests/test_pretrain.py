"""pretrain: config, objective, a tiny run that learns, exact resume, NaN handling, checkpoints, export.

Shards are synthetic (data_prep.synthetic: the real format, random contents); the backbone is a
random tiny UViT (pretrain/configs/tiny.json) or the tiny weights folder of tests/tiny_stack.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tarfile
from pathlib import Path

import pytest
import torch
from tiny_stack import make_tiny_weights_dir, tiny_configs

import pretrain.train as train_mod
from data_prep.synthetic import shapes_for, write_synthetic
from encoder.identity import IdentityModule
from encoder.objective import box_mask
from models.autoencoder import latent_scale_factor
from models.errors import run_cli
from models.paths import WeightsError
from models.uvit import UViTConfig
from pretrain.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from pretrain.config import PretrainConfig, apply_overrides
from pretrain.data import DataError
from pretrain.losses import LossConfig, condition_dropout, diffusion_loss, face_weights
from pretrain.model import PretrainNet, build_backbone, build_identity
from pretrain.train import TrainingDiverged, benchmark, main, synthetic_batch, train

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pretrain" / "configs" / "tiny.json"
UVIT = UViTConfig.from_dict(PretrainConfig.from_file(TINY).uvit)


def _config(tmp: Path, shards: Path, **kw) -> PretrainConfig:
    c = PretrainConfig.from_file(TINY)
    return dataclasses.replace(c, shards=str(shards), output_dir=str(tmp / "run"), weights=str(tmp / "no_weights"),
                               **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 shards x 12 samples, 6 people with consecutive photos."""
    out = tmp_path_factory.mktemp("shards")
    write_synthetic(out, samples=48, shard_size=12, identities=6, shapes=shapes_for(UVIT), progress=False)
    return out


# ----------------------------------------------------------------------------------------- config
def test_config_files_and_overrides(tmp_path):
    v1 = PretrainConfig.from_file(ROOT / "pretrain" / "configs" / "v1.json")
    assert v1 == PretrainConfig()  # the file spells out the defaults
    c = apply_overrides(v1, ["--lr", "3e-4", "--batch-size", "8", "--random_backbone", "--stop_at_step", "5",
                             "--uvit", json.dumps({"img_size": 8}), "--no-pair-identities"])
    assert (c.lr, c.batch_size, c.random_backbone, c.stop_at_step, c.uvit, c.pair_identities) == \
        (3e-4, 8, True, 5, {"img_size": 8}, False)
    assert apply_overrides(c, ["--stop_at_step", "none", "--random_backbone", "false"]).stop_at_step is None
    (tmp_path / "c.yaml").write_text("lr: 0.002\nmax_steps: 7\n")
    assert PretrainConfig.from_file(tmp_path / "c.yaml").max_steps == 7
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="unknown keys.*learning_rate"):
        PretrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="sum to at most 1"):
        PretrainConfig(p_drop_id=0.6, p_drop_text=0.6)
    with pytest.raises(ValueError, match="needs backbone_dtype float32"):
        PretrainConfig(mixed_precision="no")
    with pytest.raises(ValueError, match="injection must be 'extra_tokens' or 'text_slots'"):
        PretrainConfig(injection="prefix")
    with pytest.raises(ValueError, match="kv_rank must be 0, or positive with extra_tokens injection"):
        PretrainConfig(injection="text_slots", kv_rank=4)
    with pytest.raises(ValueError, match="fp16 needs loss scaling"):
        PretrainConfig(mixed_precision="fp16")
    with pytest.raises(ValueError, match="fused_identity with compile_blocks"):  # wrong gradients on the GPU
        PretrainConfig(fused_identity=True)
    assert PretrainConfig(fused_identity=True, compile_blocks=False).fused_identity


def test_cli_print_config(capsys):
    assert main(["--config", str(TINY), "--print-config", "--lr", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["lr"] == 0.5
    with pytest.raises(SystemExit):
        main(["--config", str(TINY), "--print-config", "--lr", "fast"])
    assert run_cli(main, ["--config", str(TINY), "--print-config", "--max_steps", "0"]) == 2  # rejected with a message


# -------------------------------------------------------------------------------------- objective
def test_face_weights_and_dropout_rates():
    w = face_weights(torch.tensor([[2.0, 1.0, 4.0, 3.0]]), 6, 6, extra=4.0)
    assert w.shape == (1, 1, 6, 6)
    assert w[0, 0, 1:3, 2:4].eq(5).all() and w.sum() == 36 + 4 * 4
    # the same rule widened: [2, 2, 4, 4] by half its side on each side is [1, 1, 5, 5], centres 1.5 .. 4.5
    wide = box_mask(torch.tensor([[2.0, 2.0, 4.0, 4.0]]), 8, 8, margin=0.5)
    assert wide.dtype == torch.bool and wide[0, 0, 1:5, 1:5].all() and wide.sum() == 16
    g = torch.Generator().manual_seed(0)
    drop_id, drop_text = condition_dropout(40_000, LossConfig(), g, torch.device("cpu"))
    both = (drop_id & drop_text).float().mean()
    assert abs(both - 0.05) < 0.006
    assert abs((drop_id & ~drop_text).float().mean() - 0.10) < 0.008
    assert abs((drop_text & ~drop_id).float().mean() - 0.10) < 0.008


def test_dropout_feeds_noise_text_and_no_identity():
    seen = {}

    def net(z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale):
        seen.update(text=text, t_img=t_img, t_text=t_text, id_scale=id_scale, data_type=data_type)
        return torch.zeros_like(z_n), torch.zeros_like(clip_n)

    from models.noise_schedule import NoiseScheduleVP

    batch = synthetic_batch(UVIT, 3, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    loss, parts = diffusion_loss(net, batch, NoiseScheduleVP.stable_diffusion(),
                                 LossConfig(p_drop_id=0, p_drop_text=0, p_drop_both=1.0), g, latent_scale_factor())
    assert seen["t_text"].eq(1000).all() and seen["id_scale"].eq(0).all() and seen["data_type"].eq(1).all()
    assert not torch.allclose(seen["text"], batch["text"].float())
    assert ((seen["t_img"] >= 1) & (seen["t_img"] <= 1000)).all()
    assert abs(float(parts["loss"]) - 2.0) < 0.3  # zero prediction: MSE of unit noise, twice
    diffusion_loss(net, batch, NoiseScheduleVP.stable_diffusion(), LossConfig(0, 0, 0), g, latent_scale_factor())
    assert seen["t_text"].eq(0).all() and seen["id_scale"].eq(1).all()
    torch.testing.assert_close(seen["text"], batch["text"].float())


def test_the_objective_samples_latents_in_the_weights_image_space(tmp_path):
    """Training, like sampling, scales the shards' moments by the weights' own scale factor: a latent world's
    standardised autoencoder has 1, pixel space and v1 0.18215. With v1's fixed 0.18215, an identity module
    trained on a latent world saw latents 5.5 times too small and learned to undo that instead of identity."""
    from models.noise_schedule import NoiseScheduleVP
    from pretrain.model import latent_scale

    def folder(name: str, autoencoder: dict | None) -> str:
        (tmp_path / name).mkdir()
        if autoencoder is not None:
            (tmp_path / name / "model_configs.json").write_text(json.dumps({"autoencoder": autoencoder}))
        return str(tmp_path / name)

    config = PretrainConfig.from_file(TINY)
    kl = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4, "resolution": 64,
          "attn_resolutions": [], "scale_factor": 1.0}
    for weights, scale in ((folder("latent", kl), 1.0), (folder("v1", None), 0.18215),
                           (folder("pixels", {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.5}), 0.5)):
        assert latent_scale(dataclasses.replace(config, weights=weights, random_backbone=False)) == scale
    with pytest.raises(WeightsError, match="model_configs.json"):  # a bad entry: one line, as the loader says it
        latent_scale(dataclasses.replace(config, weights=folder("bad", {"kind": "pixel_space", "bogus": 1}),
                                         random_backbone=False))

    seen = []

    def net(z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale):
        seen.append((z_n, t_img))
        return torch.zeros_like(z_n), torch.zeros_like(clip_n)

    batch = synthetic_batch(UVIT, 3, torch.device("cpu"))
    mean = torch.randn(batch["moments"].shape[0], batch["moments"].shape[1] // 2, *batch["moments"].shape[2:])
    batch["moments"] = torch.cat([mean, torch.full_like(mean, -30.0)], dim=1)  # (almost) no posterior noise
    schedule = NoiseScheduleVP.stable_diffusion()
    for scale in (1.0, 0.18215):
        diffusion_loss(net, batch, schedule, LossConfig(0, 0, 0), torch.Generator().manual_seed(0), scale)
    (z1, t), (z2, t2) = seen  # the same draws: they differ by the latent's scale alone
    assert torch.equal(t, t2)
    difference = (1.0 - 0.18215) * mean
    torch.testing.assert_close(z1 - z2, schedule.add_noise(difference, torch.zeros_like(difference), t.long()),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("injection", ["extra_tokens", "text_slots"])
def test_activation_checkpointing_gives_the_same_gradients(injection, tmp_path):
    c = dataclasses.replace(PretrainConfig.from_file(TINY), injection=injection)
    uvit = build_backbone(c, torch.device("cpu"))
    grads = []
    for ckpt in (False, True):
        identity = build_identity(c, uvit.config)
        with torch.no_grad():
            identity.gate.fill_(0.3)
        net = PretrainNet(uvit, identity, activation_checkpointing=ckpt)
        from models.noise_schedule import NoiseScheduleVP

        loss, _ = diffusion_loss(net, synthetic_batch(uvit.config, 2, torch.device("cpu")),
                                 NoiseScheduleVP.stable_diffusion(), LossConfig(0, 0, 0),
                                 torch.Generator().manual_seed(0), latent_scale_factor())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in identity.named_parameters()})
        assert all(p.grad is None for p in uvit.parameters())  # frozen: no weight gradients
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)
    assert grads[0]["projector.fc1.weight"].abs().sum() > 0  # gradients reach the projector


# ------------------------------------------------------------------------------------------ runs
def test_tiny_run_learns_and_exports(tmp_path):
    """8 samples, batch 8, no condition dropout: the training loss clearly goes down; the EMA module is
    exported where sample.py looks for it and loads."""
    data = tmp_path / "shards"
    write_synthetic(data, samples=8, shard_size=8, identities=8, shapes=shapes_for(UVIT), progress=False)
    c = _config(tmp_path, data, batch_size=8, max_steps=150, warmup_steps=1, lr=1e-2, lr_schedule="constant",
                p_drop_id=0.0, p_drop_text=0.0, p_drop_both=0.0, shuffle_buffer=1, checkpoint_every=1000,
                log_every=50)
    result = train(c)
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert last < 0.85 * first, (first, last)
    assert result.export_dir == tmp_path / "run" / "faceid_encoder"
    module = IdentityModule.load(result.export_dir, uvit_config=UVIT)
    assert module.config.num_tokens == 4 and module.gate.abs().sum() > 0
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, result.ema.state_dict()[k].cpu())
    meta = json.loads((result.export_dir / "config.json").read_text())
    assert meta["pretraining"]["step"] == 150
    assert list((tmp_path / "run" / "tb").glob("events.*"))
    assert (tmp_path / "run" / "train.log").read_text().count("done: step 150") == 1


def test_stop_and_resume_gives_the_same_losses(shards, tmp_path):
    """Two data workers, shuffling across shards, identity pairing: stopping at step 5 and resuming gives
    exactly the losses and weights of an uninterrupted run."""
    kw = dict(num_workers=2, shuffle_buffer=8, shards_per_group=1, max_steps=10, checkpoint_every=3,
              keep_checkpoints=2, p_drop_id=0.3, p_drop_text=0.3, p_drop_both=0.1)
    whole = train(_config(tmp_path / "a", shards, **kw))
    part1 = train(_config(tmp_path / "b", shards, stop_at_step=5, **kw))
    assert part1.step == 5 and part1.export_dir is None
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step_00000003", "step_00000005"]
    state = load_checkpoint(part1.checkpoint)["state"]
    assert state["data"][0]["next_worker"] == 1  # 5 batches consumed from 2 workers
    part2 = train(_config(tmp_path / "b", shards, **kw))
    assert part1.losses + part2.losses == whole.losses
    for a, b in ((whole.identity, part2.identity), (whole.ema, part2.ema)):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    assert (tmp_path / "b" / "run" / "faceid_encoder" / "identity.safetensors").is_file()
    # starting over, or from an earlier checkpoint, where later checkpoints exist is refused
    with pytest.raises(FileExistsError, match="already holds checkpoints up to step_00000010"):
        train(_config(tmp_path / "b", shards, resume="none", **kw))
    with pytest.raises(FileExistsError, match="new --output_dir"):
        train(_config(tmp_path / "b", shards, resume=str(list_checkpoints(tmp_path / "b" / "run")[0]), **kw))


class _NaNAt:
    """Wraps pretrain.train.diffusion_loss: the loss of the given calls (1-based) becomes NaN."""

    def __init__(self, calls):
        self.calls, self.n = calls, 0
        self.inner = train_mod.diffusion_loss

    def __call__(self, *a, **k):
        self.n += 1
        loss, parts = self.inner(*a, **k)
        if self.calls(self.n):
            loss = loss * float("nan")
            parts = {k: v * float("nan") for k, v in parts.items()}
        return loss, parts


def test_nan_loss_skips_the_step(shards, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train_mod, "diffusion_loss", _NaNAt(lambda n: n == 3))
    result = train(_config(tmp_path, shards, max_steps=6, checkpoint_every=6))
    assert result.skipped_steps == 1 and math.isnan(result.losses[2])
    assert all(math.isfinite(v) for i, v in enumerate(result.losses) if i != 2)
    state = load_checkpoint(result.checkpoint)["state"]
    assert state["ema_updates"] == 5 and state["skipped_steps"] == 1 and state["bad_streak"] == 0
    assert all(torch.isfinite(p).all() for p in result.identity.parameters())
    assert "step 3 skipped" in (tmp_path / "run" / "train.log").read_text()
    assert load_checkpoint(result.checkpoint)["scheduler"]["last_epoch"] == 6  # the schedule follows the step
    # a checkpoint whose schedule lags its step (written before this rule) is brought in line on resume
    sched = result.checkpoint / "scheduler.pt"
    torch.save(dict(torch.load(sched, weights_only=True), last_epoch=5), sched)
    monkeypatch.setattr(train_mod, "diffusion_loss", _NaNAt(lambda n: False))
    result = train(_config(tmp_path, shards, max_steps=7, checkpoint_every=6))
    assert load_checkpoint(result.checkpoint)["scheduler"]["last_epoch"] == 7
    assert "LR schedule at step 5, step counter at 6" in (tmp_path / "run" / "train.log").read_text()


def test_repeated_nan_stops_with_the_last_checkpoint_intact(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "diffusion_loss", _NaNAt(lambda n: n > 4))
    c = _config(tmp_path, shards, max_steps=20, checkpoint_every=4, max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row at step 7.*step_00000004"):
        train(c)
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_00000004"]
    saved = load_checkpoint(ckpts[0])
    assert all(torch.isfinite(v).all() for v in saved["identity"].values())
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no half-written checkpoint
    assert not (tmp_path / "run" / "faceid_encoder").exists()
    monkeypatch.setattr(train_mod, "diffusion_loss", _NaNAt(lambda n: False))
    assert train(dataclasses.replace(c, max_steps=6)).step == 6  # resumes from step 4


def test_pretrained_backbone_and_sample_grid(tmp_path):
    """The tiny weights folder: the UViT is loaded (not random), the VAE draws the sample grid."""
    weights = make_tiny_weights_dir(tmp_path / "weights")
    uvit = UViTConfig.from_dict(tiny_configs()["uvit"])
    data = tmp_path / "shards"
    write_synthetic(data, samples=8, shard_size=4, identities=2, shapes=shapes_for(uvit), progress=False)
    c = dataclasses.replace(_config(tmp_path, data), weights=str(weights), random_backbone=False, uvit=None,
                            max_steps=2, sample_every=2, sample_steps=2, val_identities=2)
    train(c)
    grid = tmp_path / "run" / "samples" / "step_00000002.png"
    from PIL import Image

    assert Image.open(grid).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 rows x (plain, identity), padding 2


def test_no_vae_means_no_grid_and_clear_data_errors(shards, tmp_path, caplog):
    c = _config(tmp_path, shards, max_steps=1, sample_every=1)
    train(c)
    assert "sample grids off" in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / "samples").exists()
    with pytest.raises(DataError, match="cannot feed 1 ranks x 8 workers"):
        train(dataclasses.replace(c, num_workers=8, resume="none"))
    with pytest.raises(DataError, match="no shards found"):
        train(dataclasses.replace(c, shards=str(tmp_path / "nothing-*.tar"), resume="none"))
    other = dataclasses.replace(c, uvit=dict(c.uvit, text_dim=4), resume="none", output_dir=str(tmp_path / "r2"))
    with pytest.raises(DataError, match=r"text: shards \(77, 8\), backbone needs \(77, 4\)"):
        train(other)


def test_synthetic_shards_cli(tmp_path, capsys):
    from data_prep.synthetic import main as synthetic_main

    assert synthetic_main(["--out", str(tmp_path), "--samples", "10", "--shard-size", "4", "--identities", "3",
                           "--uvit", str(TINY)]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in m["shards"]] == [4, 4, 2] and m["shapes"]["text"]["shape"] == [77, 8]
    assert "3 shards, 10 samples" in capsys.readouterr().out


def test_benchmark_api_on_cpu(shards):
    c = dataclasses.replace(PretrainConfig.from_file(TINY), batch_size=2, shards=str(shards), num_workers=2)
    r = benchmark(c, steps=2, warmup=1)
    assert r["samples_per_s"] > 0 and r["steps"] == 2 and r["peak_allocated_gib"] is None
    assert r["data"] == "synthetic" and math.isfinite(r["mean_loss"])
    from_shards = benchmark(c, steps=3, warmup=1, data="shards")  # the training loop's loader feeds the step
    assert from_shards["data"] == "shards" and from_shards["num_workers"] == 2
    assert math.isfinite(from_shards["mean_loss"])
    loader = benchmark(c, steps=3, warmup=1, data="none")  # the loader alone: no model, no loss
    assert loader["samples_per_s"] > 0 and loader["mean_loss"] is None
    plain = benchmark(dataclasses.replace(c, backbone_dtype="float32"), steps=1, warmup=0, autocast="bfloat16")
    assert plain["mixed_precision"] == "bfloat16 autocast, no loss scaling"
    with pytest.raises(ValueError, match="synthetic, shards or none"):
        benchmark(c, data="photos")


# ----------------------------------------------------------------------- interruptions and damage
def _cut_inside_a_member(tar: Path) -> int:
    """Truncate a shard in the middle of a member of its middle sample; returns the samples whole before it."""
    with tarfile.open(tar) as t:
        members = t.getmembers()
    mid = len(members) // 2
    keys = [m.name.split(".")[0] for m in members]
    tar.write_bytes(tar.read_bytes()[: members[mid].offset_data + members[mid].size // 2])
    return len(set(keys[:mid]) - {keys[mid]})


def test_damaged_shard_is_named_with_the_samples_lost(tmp_path, capsys):
    data = tmp_path / "shards"
    write_synthetic(data, samples=24, shard_size=12, identities=6, shapes=shapes_for(UVIT), progress=False)
    whole = _cut_inside_a_member(data / "shard-000001.tar")
    c = _config(tmp_path, data, max_steps=8, checkpoint_every=100, log_every=3)
    train(c)
    log = (tmp_path / "run" / "train.log").read_text()
    lost = f"damaged shard shard-000001.tar ({data / 'shard-000001.tar'}): unreadable"
    assert log.count(lost) == 1  # named once, though every pass meets it
    assert f"after {whole} whole sample(s), {12 - whole} sample(s) lost" in log
    assert "delete shard-000001.json" in log and "1 damaged shard(s) met" in log
    assert lost in capsys.readouterr().err


def test_a_run_with_identity_key_value_deltas_trains_them_and_exports_them(shards, tmp_path):
    c = _config(tmp_path, shards, kv_rank=2, max_steps=6, warmup_steps=1, lr=1e-2, lr_schedule="constant",
                checkpoint_every=1000, log_every=3)
    result = train(c)
    module = IdentityModule.load(result.export_dir, uvit_config=UVIT)
    assert module.config.kv_rank == 2 and module.kv_up.abs().sum() > 0  # it trained from its zero start
    assert "key/value rank 2" in (tmp_path / "run" / "train.log").read_text()


def test_rerun_with_another_model_shape_is_refused_before_loading(shards, tmp_path, monkeypatch, capsys):
    train(_config(tmp_path, shards, max_steps=4, stop_at_step=2))
    monkeypatch.setattr(train_mod, "build", lambda *a, **k: pytest.fail("built a model for a refused run"))
    argv = ["--config", str(TINY), "--shards", str(shards), "--output_dir", str(tmp_path / "run"),
            "--weights", str(tmp_path / "no_weights"), "--max_steps", "4", "--num_tokens", "8"]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert "num_tokens: run 4, config 8" in err and "step_00000002" in err
    assert "hint: to start a new run with this shape, give a new --output_dir" in err and "--num_tokens 4" in err
    assert "Traceback" not in err
    # a run from before kv_rank existed (no such field in its state) is a kv_rank 0 run
    state = next((tmp_path / "run" / "checkpoints").glob("step_*")) / "trainer_state.json"
    saved = json.loads(state.read_text())
    saved["config"].pop("kv_rank")
    state.write_text(json.dumps(saved))
    assert run_cli(main, argv[:-2] + ["--kv_rank", "2"]) == 2
    assert "kv_rank: run 0, config 2" in capsys.readouterr().err


class _CtrlCAt:
    """Wraps pretrain.train.diffusion_loss: sends this process SIGINT during the given call (1-based)."""

    def __init__(self, call):
        self.call, self.n = call, 0
        self.inner = train_mod.diffusion_loss

    def __call__(self, *a, **k):
        self.n += 1
        if self.n == self.call:
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner(*a, **k)


def test_ctrl_c_checkpoints_exits_130_and_resumes_exactly(shards, tmp_path, monkeypatch, capsys):
    kw = dict(max_steps=8, checkpoint_every=3, p_drop_id=0.3, p_drop_text=0.3, p_drop_both=0.1)
    whole = train(_config(tmp_path / "a", shards, **kw))
    monkeypatch.setattr(train_mod, "diffusion_loss", _CtrlCAt(5))
    argv = ["--config", str(TINY), "--shards", str(shards), "--output_dir", str(tmp_path / "b" / "run"),
            "--weights", str(tmp_path / "b" / "no_weights"), "--max_steps", "8", "--checkpoint_every", "3",
            "--p_drop_id", "0.3", "--p_drop_text", "0.3", "--p_drop_both", "0.1"]
    assert run_cli(main, argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: ")
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step_00000003", "step_00000005"]
    assert "interrupted at step 5" in (tmp_path / "b" / "run" / "train.log").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back
    monkeypatch.setattr(train_mod, "diffusion_loss", _CtrlCAt(0))
    rest = train(_config(tmp_path / "b", shards, **kw))
    assert rest.losses == whole.losses[5:]
    for a, b in ((whole.identity, rest.identity), (whole.ema, rest.ema)):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)


def _save(run: Path, step: int, value: float, keep: int = 3) -> Path:
    from pretrain.ema import EMA

    identity = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(identity.weight, value)
    optimizer = torch.optim.AdamW(identity.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return save_checkpoint(run, step, identity=identity, ema=EMA(identity, 0.9), optimizer=optimizer,
                           scheduler=scheduler, rng=[], state={"config": {}}, keep=keep)


def test_checkpoint_of_the_same_step_replaces_the_old_one_only_once_in_place(tmp_path, monkeypatch):
    _save(tmp_path, 4, 1.0)
    real_replace, events = os.replace, []

    def replace(src, dst):
        events.append(("rename", Path(src).name, Path(dst).name))
        if Path(src).name == ".step_00000004.tmp":
            raise OSError("disk gone")  # a crash between moving the old one aside and the new one in
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        _save(tmp_path, 4, 2.0)
    survivor = latest_checkpoint(tmp_path)  # the old checkpoint of step 4 is still there, aside
    assert survivor is not None and survivor.name == ".step_00000004.old"
    assert load_checkpoint(survivor)["identity"]["weight"].eq(1.0).all()
    monkeypatch.setattr(os, "replace", real_replace)

    real_fsync, synced = os.fsync, []

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def logged_replace(src, dst):
        synced.append(("rename", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    final = _save(tmp_path, 4, 3.0)
    assert load_checkpoint(final)["identity"]["weight"].eq(3.0).all()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]
    assert not list((tmp_path / "checkpoints").glob(".step_*"))  # aside and temporary folders gone
    moved_in = synced.index(("rename", ".step_00000004.tmp", "step_00000004"))
    assert str((tmp_path / "checkpoints").resolve()) in synced[moved_in + 1:]  # the folder synced after the rename
    _save(tmp_path, 4, 4.0)  # with the same step in place: aside, in, old one deleted
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]
    assert load_checkpoint(list_checkpoints(tmp_path)[0])["identity"]["weight"].eq(4.0).all()


def test_export_of_a_checkpoint_matches_the_runs_own_export(shards, tmp_path, capsys):
    """pretrain.export writes the EMA of any checkpoint: at max_steps the very module the run exported,
    before it the checkpoint's EMA, marked as stopped early; a folder that is no checkpoint is a one-line error.
    The run's own snapshots (export_every) are the same modules."""
    from pretrain.export import main as export_main

    result = train(_config(tmp_path, shards, max_steps=4, checkpoint_every=2, keep_checkpoints=2, export_every=2))
    first, last = list_checkpoints(tmp_path / "run")
    assert run_cli(export_main, [str(last), "--like", str(result.export_dir), "--out", str(tmp_path / "e4")]) == 0
    assert run_cli(export_main, [str(first), "--like", str(result.export_dir), "--out", str(tmp_path / "e2")]) == 0
    own, again = IdentityModule.load(result.export_dir), IdentityModule.load(tmp_path / "e4")
    for k, v in own.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
    early = IdentityModule.load(tmp_path / "e2")
    for k, v in load_checkpoint(first)["ema"].items():
        torch.testing.assert_close(early.state_dict()[k], v, rtol=0, atol=0)
    snapshots = sorted((tmp_path / "run" / "exports").iterdir())
    assert [p.name for p in snapshots] == ["step_00000002", "step_00000004"]
    for snapshot, same in zip(snapshots, (early, own)):
        for k, v in IdentityModule.load(snapshot).state_dict().items():
            torch.testing.assert_close(same.state_dict()[k], v, rtol=0, atol=0)
    assert json.loads((snapshots[0] / "config.json").read_text())["pretraining"]["step"] == 2
    meta4, meta2 = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("e4", "e2"))
    assert meta4["pretraining"]["step"] == 4 and "stopped_early" not in meta4["pretraining"]
    assert meta2["pretraining"]["stopped_early"] == "step 2 of 4"
    assert meta4["face_model"] == json.loads((result.export_dir / "config.json").read_text())["face_model"]
    capsys.readouterr()
    assert run_cli(export_main, [str(tmp_path), "--like", str(result.export_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "is not a training checkpoint" in err and "Traceback" not in err and not (tmp_path / "x").exists()
    other = IdentityModule(dataclasses.replace(own.config, hidden_dim=own.config.hidden_dim * 2))
    other.save(tmp_path / "other")
    assert run_cli(export_main, [str(last), "--like", str(tmp_path / "other"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "does not match the architecture" in err and "Traceback" not in err and not (tmp_path / "x").exists()
