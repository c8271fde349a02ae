"""What pretraining trains: the frozen UViT and the identity module as one module.

`PretrainNet` is what DDP wraps: the backbone's parameters have requires_grad False (no weight
gradients, not synchronised), gradients flow through its activations into the identity tokens, and
the identity module (float32) is the only thing the optimizer sees.
"""

from __future__ import annotations

import torch
from torch import nn

from encoder.config import IdentityConfig
from encoder.id_uvit import IDConditionedUViT
from encoder.identity import IdentityModule
from encoder.projector import pool_embeddings
from models.uvit import UViT, UViTConfig


def backbone_config(config) -> UViTConfig:
    """The UViT config of a PretrainConfig: its `uvit` dict, else the weights folder's
    model_configs.json (a random backbone reads it only from a folder named in `weights`), else v1."""
    if config.uvit:
        return UViTConfig.from_dict(dict(config.uvit))
    if not config.random_backbone or config.weights:
        from models.paths import read_model_configs

        configs = read_model_configs(config.weights)
        if "uvit" in configs:
            return UViTConfig.from_dict(configs["uvit"])
    return UViTConfig.v1()


def latent_scale(config) -> float:
    """The weights folder's image-space scale factor (models.autoencoder.latent_scale_factor of its
    model_configs.json; v1's without one, or for a random backbone without a weights folder): the objective
    samples the shards' moments into the latents the backbone was trained on with it."""
    from models.autoencoder import latent_scale_factor

    if not config.random_backbone or config.weights:
        from models.paths import read_model_configs

        return latent_scale_factor(read_model_configs(config.weights).get("autoencoder"))
    return latent_scale_factor(None)


def build_backbone(config, device: torch.device) -> UViT:
    """The frozen UViT in `config.backbone_dtype` on `device`: loaded from the weights folder, or with
    random weights (seeded by config.seed, the same on every rank) when config.random_backbone."""
    from models import load_uvit
    from models.paths import find_weights

    dtype = getattr(torch, config.backbone_dtype)
    uvit_config = backbone_config(config)
    device = torch.device(device)
    if config.random_backbone:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.device(device):
            torch.manual_seed(config.seed)
            uvit = UViT(uvit_config)
        uvit = uvit.to(dtype)
    else:
        uvit = load_uvit(find_weights("uvit", None, config.weights), uvit_config, device=device, dtype=dtype)
    return uvit.eval().requires_grad_(False)


def build_identity(config, uvit_config: UViTConfig) -> IdentityModule:
    """A fresh identity module (zero gates: the untouched backbone; initialised from config.seed) or
    `config.init_from`'s, in float32, on the CPU."""
    want = IdentityConfig.for_uvit(uvit_config, num_tokens=config.num_tokens, hidden_dim=config.hidden_dim,
                                   injection=config.injection, kv_rank=config.kv_rank)
    if config.init_from:
        return IdentityModule.load(config.init_from, expect=want, uvit_config=uvit_config).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return IdentityModule(want).float()


class PretrainNet(nn.Module):
    """forward(z_n [B, C, h, w], clip_n [B, 1, Dc], text [B, L, Dt], t_img [B], t_text [B],
    data_type [B] long, face [B, 512], face_flip [B, 512], id_scale [B]) -> (eps_z, eps_clip).

    The face embeddings are pooled as at inference (mean with the mirrored crop's when
    identity.config.use_flip, re-normalised), projected to K tokens and injected.
    """

    def __init__(self, uvit: UViT, identity: IdentityModule, activation_checkpointing: bool = False,
                 fused: bool = False, compile_blocks: bool = False):
        super().__init__()
        self.net = IDConditionedUViT(uvit, identity, fused=fused, checkpoint_blocks=activation_checkpointing,
                                     compile_blocks=compile_blocks)

    @property
    def identity(self) -> IdentityModule:
        return self.net.identity

    def forward(self, z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale):
        flip = face_flip[:, None] if self.identity.config.use_flip else None
        tokens = self.identity.tokens(pool_embeddings(face[:, None], flip))
        img_out, clip_out, _ = self.net(z_n, clip_n, text, t_img, t_text, data_type, id_tokens=tokens,
                                        id_scale=id_scale)
        return img_out, clip_out
