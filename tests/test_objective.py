"""One objective for pretraining and refinement (encoder.objective), and the nested pretraining config.

Refinement's loss at its starting tokens must be the pretraining loss of the same photo under the same
random draws; the config nests the objective's settings but keeps their flat names working.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from encoder.id_uvit import IDConditionedUViT
from encoder.objective import LossConfig, noise_prediction_loss
from models.autoencoder import latent_scale_factor
from models.noise_schedule import NoiseScheduleVP
from personalize.refine import RefineOptions, refine_tokens
from pretrain.config import PretrainConfig, apply_overrides, flat_fields
from pretrain.losses import diffusion_loss
from pretrain.model import PretrainNet, build_backbone, build_identity
from pretrain.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pretrain" / "configs" / "tiny.json"
V1_SCALE = latent_scale_factor()  # the tiny stacks' image space is v1's


def _tiny_nets():
    c = PretrainConfig.from_file(TINY)
    uvit = build_backbone(c, torch.device("cpu"))
    identity = build_identity(c, uvit.config)
    with torch.no_grad():
        identity.gate.fill_(0.3)  # the identity tokens change the prediction
    return uvit, identity.requires_grad_(False)


@pytest.mark.parametrize("face_loss_weight", [0.0, 2.0])
def test_refinement_starts_from_the_pretraining_loss(face_loss_weight):
    """One photo, batch 3: refinement's first loss (before any update) equals pretraining's loss on
    three copies of that photo, conditioned on its face, after the same index draw."""
    uvit, identity = _tiny_nets()
    cfg = uvit.config
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(1, 2 * cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    clip = torch.randn(1, cfg.clip_img_dim, generator=g)
    text = torch.randn(1, cfg.num_text_tokens, cfg.text_dim, generator=g)
    face, flip = (torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1) for _ in range(2))
    box = torch.tensor([[1.0, 2.0, 5.0, 7.0]])  # latent pixels
    objective = LossConfig(p_drop_id=0.0, p_drop_text=0.0, p_drop_both=0.0, clip_loss_weight=0.5,
                           face_loss_weight=face_loss_weight)
    schedule, b, seed = NoiseScheduleVP.stable_diffusion(), 3, 7

    tokens = identity.tokens_from_photos(face, flip)
    opts = RefineOptions(steps=2, lr=1e-2, batch_size=b, seed=seed, objective=objective)
    _, losses = refine_tokens(IDConditionedUViT(uvit, identity), tokens, moments, clip, box, text, schedule, opts,
                              latent_scale=V1_SCALE, progress=False)

    gen = torch.Generator().manual_seed(seed)
    torch.randint(0, 1, (b,), generator=gen)  # refinement's draw of the photos
    batch = {"moments": moments.repeat(b, 1, 1, 1), "clip": clip.repeat(b, 1), "text": text.repeat(b, 1, 1),
             "face": face.repeat(b, 1), "face_flip": flip.repeat(b, 1), "box": box.repeat(b, 1)}
    loss, parts = diffusion_loss(PretrainNet(uvit, identity), batch, schedule, objective, gen, V1_SCALE)
    assert losses[0] == pytest.approx(float(loss), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(float(parts["loss_z"]) + 0.5 * float(parts["loss_clip"]), rel=1e-6)
    assert losses[1] != losses[0]  # the tokens were updated


def test_face_weight_needs_boxes_and_changes_the_loss():
    batch_moments = torch.randn(2, 8, 4, 4)
    clip, text = torch.randn(2, 16), torch.randn(2, 77, 8)

    def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale):
        return torch.zeros_like(z_n), torch.zeros_like(clip_n)

    schedule = NoiseScheduleVP.stable_diffusion()
    weighted = LossConfig(face_loss_weight=3.0)
    with pytest.raises(ValueError, match="face boxes"):
        noise_prediction_loss(predict, batch_moments, clip, text, schedule, weighted, torch.Generator(),
                              latent_scale=V1_SCALE)
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 2)
    args = (predict, batch_moments, clip, text, schedule)
    plain, _ = noise_prediction_loss(*args, LossConfig(), torch.Generator().manual_seed(1), box=box,
                                     latent_scale=V1_SCALE)
    heavy, _ = noise_prediction_loss(*args, weighted, torch.Generator().manual_seed(1), box=box,
                                     latent_scale=V1_SCALE)
    assert float(plain) != float(heavy)


# ------------------------------------------------------------------------------------- config
def test_config_nests_the_loss_and_keeps_flat_names(tmp_path, capsys):
    c = PretrainConfig.from_file(TINY)
    assert c.loss == LossConfig() and c.p_drop_id == c.loss.p_drop_id
    # flat: constructor, dataclasses.replace, command line (both spellings)
    assert PretrainConfig(p_drop_text=0.2).loss == LossConfig(p_drop_text=0.2)
    r = dataclasses.replace(c, p_drop_both=0.0, lr=0.5)
    assert (r.loss.p_drop_both, r.lr, r.loss.p_drop_id) == (0.0, 0.5, c.loss.p_drop_id)
    o = apply_overrides(c, ["--p_drop_id", "0.3", "--face-loss-weight", "2", "--batch_size", "16"])
    assert o.loss == LossConfig(p_drop_id=0.3, face_loss_weight=2.0) and o.batch_size == 16
    # files: nested (to_dict's form) and flat (written before the nesting) read the same
    nested = c.to_dict()
    assert nested["loss"]["p_drop_id"] == 0.1 and "p_drop_id" not in nested
    flat = flat_fields(dict(nested, loss=dataclasses.asdict(o.loss)))
    assert "loss" not in flat and flat["face_loss_weight"] == 2.0
    (tmp_path / "old.json").write_text(json.dumps(flat))
    assert PretrainConfig.from_file(tmp_path / "old.json").loss == o.loss
    assert PretrainConfig.from_dict(nested) == c
    with pytest.raises(ValueError, match="unknown keys.*p_drop_face"):
        PretrainConfig.from_dict({"loss": {"p_drop_face": 0.1}})
    assert main(["--config", str(TINY), "--print-config", "--p_drop_id", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"]["p_drop_id"] == 0.25


def _recording_batch():
    """A small batch (moments, clip, text) and a predictor that records the image timesteps it is given
    (`seen`, one tensor per call) and returns half its noisy inputs."""
    g = torch.Generator().manual_seed(0)
    moments, clip, text = torch.randn(4, 8, 4, 4, generator=g), torch.randn(4, 6, generator=g), torch.randn(4, 3, 5)
    seen = []

    def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale):
        seen.append(t_img.long())
        return z_n * 0.5, clip_n * 0.5

    return moments, clip, text, seen, predict


def test_v_weighting_is_the_noise_mse_weighted_by_one_plus_inverse_snr():
    """timestep_weighting "v": each sample's terms times 1 + 1/SNR(n) of its own timestep, the same random
    draws as the plain objective (so "eps" is unchanged and "v" differs only by the weights)."""
    from encoder.objective import timestep_weights

    schedule = NoiseScheduleVP.stable_diffusion()
    n = torch.tensor([1, 500, 1000])
    ab = schedule.alphas_cumprod[n]
    assert torch.allclose(schedule.snr(n).double(), ab / (1 - ab), rtol=1e-4)
    assert timestep_weights(schedule, n, "eps") is None
    w = timestep_weights(schedule, n, "v")
    assert w[0] < 1.01 and w[2] > 200 and bool((w[1:] > w[:-1]).all())  # more weight with more noise
    with pytest.raises(ValueError, match="timestep_weighting"):
        LossConfig(timestep_weighting="x0")

    moments, clip, text, seen, predict = _recording_batch()
    cfg = LossConfig(p_drop_id=0, p_drop_text=0, p_drop_both=0)
    per = {k: noise_prediction_loss(predict, moments, clip, text, schedule,
                                    dataclasses.replace(cfg, timestep_weighting=k), torch.Generator().manual_seed(3),
                                    per_sample=True, latent_scale=V1_SCALE)[1] for k in ("eps", "v")}
    assert torch.equal(seen[0], seen[1])
    w = timestep_weights(schedule, seen[0], "v")
    for term in ("loss_z", "loss_clip"):
        assert torch.allclose(per["v"][term], per["eps"][term] * w)


def test_a_fixed_timestep_puts_every_sample_there_and_keeps_the_draws_fixed():
    """timestep=n: the network sees n for every sample; the same call twice gives the same loss (its draws
    come from the generator alone), and another n gives another loss."""
    schedule = NoiseScheduleVP.stable_diffusion()
    moments, clip, text, seen, predict = _recording_batch()
    cfg = LossConfig(p_drop_id=0, p_drop_text=0, p_drop_both=0)
    loss = {n: noise_prediction_loss(predict, moments, clip, text, schedule, cfg, torch.Generator().manual_seed(3),
                                     timestep=n, latent_scale=V1_SCALE)[0] for n in (250, 900)}
    again = noise_prediction_loss(predict, moments, clip, text, schedule, cfg, torch.Generator().manual_seed(3),
                                  timestep=250, latent_scale=V1_SCALE)[0]
    assert seen[0].tolist() == [250] * 4 and seen[1].tolist() == [900] * 4
    assert torch.equal(loss[250], again) and not torch.equal(loss[250], loss[900])
