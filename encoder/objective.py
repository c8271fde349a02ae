"""The identity module's objective: UniDiffuser's text-to-image noise MSE, conditioned on identity.

Pretraining (pretrain.losses, the identity module's weights) and refinement (personalize.refine, one
person's identity tokens) both call `noise_prediction_loss`, so refinement optimises the loss the
module was pretrained on. For a batch:

    z0   = scale * (mean + std * e)                 a latent drawn from VAE moments
    n    ~ U{1..N}                                  one timestep for the image and its CLIP token
    z_n  = sqrt(ab_n) z0 + sqrt(1 - ab_n) eps_z     clip_n likewise with eps_c
    text = clean text features, t_text = 0          or, when the text is dropped, N(0, I) with
                                                    t_text = N (UniDiffuser's unconditional form)
    id_scale = 1                                    0 when the identity is dropped

    loss = mean_w (eps_z_pred - eps_z)^2 + clip_loss_weight * mean (eps_c_pred - eps_c)^2

with w = 1 + face_loss_weight inside the face box and 1 elsewhere (a weighted mean per sample).
Each sample's terms are then weighted by its timestep (`timestep_weights`): 1 for UniDiffuser's plain
noise MSE ("eps", the default), or 1 + 1/SNR(n) ("v": the velocity MSE's weighting, which is the
x0 error at high noise, where the image is still undecided and its conditions decide it; a short
run from scratch learns to follow its conditions there far sooner).
Condition dropout, per sample and exclusive: identity only p_drop_id, text only p_drop_text, both
p_drop_both. Every random number comes from the one `generator`, in a fixed order, so a step is
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange

from models.autoencoder import latent_from_moments
from models.noise_schedule import NoiseScheduleVP

TERMS = ("loss", "loss_z", "loss_clip")
WEIGHTINGS = ("eps", "v")

# predict(z_n [B, C, h, w], clip_n [B, 1, Dc], text [B, L, Dt], t_img [B], t_text [B], data_type [B] long,
#         id_scale [B]) -> (eps_z [B, C, h, w], eps_clip [B, 1, Dc]): the identity-conditioned UViT
Predictor = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LossConfig:
    p_drop_id: float = 0.10  # identity dropped (text kept)
    p_drop_text: float = 0.10  # text dropped: N(0, I) text with t_text = N (identity kept)
    p_drop_both: float = 0.05
    clip_loss_weight: float = 1.0  # weight of the image-CLIP noise MSE next to the latent's
    face_loss_weight: float = 0.0  # extra weight of latent pixels inside the face box (0 = plain MSE)
    data_type: int = 1  # UniDiffuser v1's data-type token (1, as in sampling)
    timestep_weighting: str = "eps"  # "eps" (plain noise MSE) or "v" (1 + 1/SNR): see the module docstring

    def __post_init__(self):
        if self.timestep_weighting not in WEIGHTINGS:
            raise ValueError(f"objective: timestep_weighting must be one of {WEIGHTINGS}, "
                             f"not {self.timestep_weighting!r}")
        if not (min(self.p_drop_id, self.p_drop_text, self.p_drop_both) >= 0
                and self.p_drop_id + self.p_drop_text + self.p_drop_both <= 1):
            raise ValueError("objective: dropout probabilities must be >= 0 and sum to at most 1")


def condition_dropout(batch: int, cfg: LossConfig, generator: torch.Generator | None,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_id [B] bool, drop_text [B] bool): both with p_drop_both, identity only with p_drop_id,
    text only with p_drop_text, nothing dropped otherwise."""
    u = torch.rand(batch, generator=generator, device=device)
    both = u < cfg.p_drop_both
    id_only = (u >= cfg.p_drop_both) & (u < cfg.p_drop_both + cfg.p_drop_id)
    text_only = (u >= cfg.p_drop_both + cfg.p_drop_id) & (u < cfg.p_drop_both + cfg.p_drop_id + cfg.p_drop_text)
    return both | id_only, both | text_only


def timestep_weights(schedule: NoiseScheduleVP, n: torch.Tensor, kind: str) -> torch.Tensor | None:
    """Per-sample loss weights [B] float32 for timesteps n [B]: None for "eps" (all 1), 1 + 1/SNR(n)
    for "v"."""
    if kind == "eps":
        return None
    if kind == "v":
        return 1.0 + 1.0 / schedule.snr(n)
    raise ValueError(f"unknown timestep weighting {kind!r} (one of {WEIGHTINGS})")


def box_mask(box: torch.Tensor, h: int, w: int, margin: float = 0.0) -> torch.Tensor:
    """[B, 1, h, w] bool: the pixels whose centres lie in the box [B, 4] (x1, y1, x2, y2 in the map's pixels),
    widened by margin times its width and height on each side. The one face-region rule: the identity
    objective's face weights, the world stages' --face-weight and the world evaluation's face-box errors."""
    b = box.float()
    if margin:
        wh = (b[:, 2:] - b[:, :2]) * margin
        b = torch.cat([b[:, :2] - wh, b[:, 2:] + wh], dim=1)
    ys = torch.arange(h, device=box.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=box.device, dtype=torch.float32) + 0.5
    inside_y = (ys[None] >= b[:, 1:2]) & (ys[None] <= b[:, 3:4])  # [B, h]
    inside_x = (xs[None] >= b[:, 0:1]) & (xs[None] <= b[:, 2:3])  # [B, w]
    return rearrange(inside_y, "b h -> b 1 h 1") & rearrange(inside_x, "b w -> b 1 1 w")


def face_weights(box: torch.Tensor, h: int, w: int, extra: float) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, h, w]: 1 + extra where the pixel centre lies in the box [B, 4]
    (x1, y1, x2, y2 in latent pixels), else 1."""
    return 1.0 + extra * box_mask(box, h, w).float()


def noise_prediction_loss(predict: Predictor, moments: torch.Tensor, clip: torch.Tensor, text: torch.Tensor,
                          schedule: NoiseScheduleVP, cfg: LossConfig, generator: torch.Generator | None = None, *,
                          latent_scale: float, box: torch.Tensor | None = None,
                          per_sample: bool = False,
                          timestep: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch's loss (a 0-d float32 tensor) and its terms {"loss", "loss_z", "loss_clip"} (detached).

    moments [B, 2C, h, w] (VAE mean and log-variance), sampled into latents with `latent_scale` (the image
    space's own factor: models.autoencoder.latent_scale_factor; no default, as one factor fits only some
    image spaces), clip [B, Dc] (image-CLIP embedding of the same image), text [B, L, Dt] (its caption's
    text features), box [B, 4] (the face in latent pixels; needed when cfg.face_loss_weight > 0), all on one
    device; predict: see `Predictor`.
    per_sample: the loss and its terms per sample, [B] each, instead of their batch means (the
    pretraining identity diagnostic's paired differences). timestep: every sample at this timestep
    (1..N) instead of the uniform draw (which then takes nothing from `generator`).
    """
    text, clip = text.float(), clip.float()
    b, device = moments.shape[0], moments.device
    if timestep is None:
        n = schedule.sample_timesteps(b, generator=generator, device=device)
    else:
        n = torch.full((b,), timestep, dtype=torch.long, device=device)
    z0 = latent_from_moments(moments.float(), latent_scale, generator)
    clip0 = rearrange(clip, "b d -> b 1 d")
    eps_z = torch.randn(z0.shape, generator=generator, device=device)
    eps_c = torch.randn(clip0.shape, generator=generator, device=device)
    z_n, clip_n = schedule.add_noise(z0, eps_z, n), schedule.add_noise(clip0, eps_c, n)

    drop_id, drop_text = condition_dropout(b, cfg, generator, device)
    noise_text = torch.randn(text.shape, generator=generator, device=device)
    text = torch.where(rearrange(drop_text, "b -> b 1 1"), noise_text, text)
    t_text = drop_text.float() * schedule.total_N
    id_scale = (~drop_id).float()
    data_type = torch.full((b,), cfg.data_type, dtype=torch.long, device=device)

    pred_z, pred_c = predict(z_n, clip_n, text, n.float(), t_text, data_type, id_scale)
    err_z = (pred_z.float() - eps_z) ** 2
    if cfg.face_loss_weight:
        if box is None:
            raise ValueError("face_loss_weight > 0 needs the face boxes")
        w = face_weights(box, err_z.shape[-2], err_z.shape[-1], cfg.face_loss_weight).expand_as(err_z)
        loss_z = (err_z * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))  # [B]
    else:
        loss_z = err_z.mean(dim=(1, 2, 3))
    loss_clip = ((pred_c.float() - eps_c) ** 2).mean(dim=(1, 2))
    if (tw := timestep_weights(schedule, n, cfg.timestep_weighting)) is not None:
        loss_z, loss_clip = loss_z * tw, loss_clip * tw
    if not per_sample:
        loss_z, loss_clip = loss_z.mean(), loss_clip.mean()
    loss = loss_z + cfg.clip_loss_weight * loss_clip
    return loss, {"loss": loss.detach(), "loss_z": loss_z.detach(), "loss_clip": loss_clip.detach()}
