"""The pretraining loss: encoder.objective's noise MSE on a batch of shard features.

The objective itself (noise, timesteps, condition dropout, face weighting) lives in
encoder/objective.py, shared with refinement; this module feeds it the shard stream's batches.
"""

from __future__ import annotations

import torch

from encoder.objective import LossConfig, condition_dropout, face_weights, noise_prediction_loss
from models.noise_schedule import NoiseScheduleVP

__all__ = ["LossConfig", "condition_dropout", "diffusion_loss", "face_weights"]


def diffusion_loss(net, batch: dict, schedule: NoiseScheduleVP, cfg: LossConfig, generator: torch.Generator | None,
                   latent_scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch's loss (a 0-d float32 tensor) and its terms {"loss", "loss_z", "loss_clip"} (detached).
    latent_scale: the weights' image-space scale factor (pretrain.model.latent_scale).

    net(z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale) -> (eps_z, eps_clip):
    pretrain.model.PretrainNet. batch: moments [B, 2C, h, w], text [B, L, Dt], clip [B, Dc],
    face / face_flip [B, 512] (the conditioning photo's ArcFace embeddings), box [B, 4], on the
    net's device.
    """
    face, face_flip = batch["face"].float(), batch["face_flip"].float()

    def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale):
        return net(z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale)

    return noise_prediction_loss(predict, batch["moments"], batch["clip"], batch["text"], schedule, cfg, generator,
                                 box=batch["box"], latent_scale=latent_scale)
