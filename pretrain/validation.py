"""Validation during pretraining: which shards are held out, and sample grids of fixed identities.

The validation split (`split_shards`): `val_shards` when given (any of them also listed in `shards`
is left out of training), else the last `val_holdout_shards` shards of `shards` (in the order of
the manifest, or of the sorted file names), which training never reads. With neither, validation
reads the training shards (the tiny test config does, its corpora having a single shard). Sample
grids and the identity diagnostic (pretrain.diagnostic) read the validation shards from the start.

Sample grids: one row per validation sample (its own caption's text features, its own face): the
image without identity and the image with the EMA identity module, from the same noise, so the grid
shows what the module adds. Needs the VAE to decode; when its weights are not available (or do not
fit the backbone) grids are switched off with one log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from encoder.guidance import identity_guided_eps_fn
from encoder.id_uvit import IDConditionedUViT
from encoder.projector import pool_embeddings
from models.execution import Execution
from models.noise_schedule import NoiseScheduleVP
from models.sampling import sample_joint
from pretrain.data import DataError, list_shards, read_validation


def split_shards(shards: list[Path], config) -> tuple[list[Path], list[Path], bool]:
    """(training shards, validation shards, whether the validation shards are held out of training)."""
    if config.val_shards:
        val = list_shards(config.val_shards)
        held = {p.resolve() for p in val}
        train = [p for p in shards if p.resolve() not in held]
        if not train:
            raise DataError(f"every shard of {config.shards!r} is also a validation shard ({config.val_shards!r}); "
                            "nothing is left to train on", hint="give --val_shards other shards than --shards")
        return train, val, True
    k = config.val_holdout_shards
    if k <= 0:
        return shards, shards, False
    if len(shards) <= k:
        raise DataError(f"{len(shards)} shard(s) in {config.shards!r}: holding out {k} for validation leaves none "
                        "to train on", hint="write more, smaller shards (data_prep --shard-size), or pass "
                        "--val_holdout_shards 0 (validation then reads training shards)")
    return shards[:-k], shards[-k:], True


class SampleGrid:
    """grid(identity) -> [3, H, W] in [0, 1]: rows = validation samples, columns = (plain, identity)."""

    def __init__(self, uvit, autoencoder, val: dict, *, steps: int, cfg: float, device: torch.device):
        self.uvit, self.autoencoder, self.steps, self.cfg, self.device = uvit, autoencoder, steps, cfg, device
        self.text = val["text"].float().to(device)
        self.face, self.face_flip = val["face"].to(device), val["face_flip"].to(device)
        self.captions = val["captions"]
        self.schedule = NoiseScheduleVP.stable_diffusion()
        self.execution = Execution.autocast_to(device, next(uvit.parameters()).dtype)  # the backbone's dtype

    @classmethod
    def create(cls, config, uvit, device: torch.device, val_shards: list[Path], log: logging.Logger
               ) -> SampleGrid | None:
        """The grid maker for the validation shards, or None (with a log line saying why) when grids
        cannot be made."""
        if config.sample_every <= 0:
            return None
        from models import load_autoencoder
        from models.paths import WeightsError, find_weights, read_model_configs

        try:
            path = find_weights("autoencoder", None, config.weights)
            ae = load_autoencoder(path, read_model_configs(config.weights).get("autoencoder"), device=device,
                                  dtype=torch.float32)
        except (WeightsError, ValueError) as e:
            log.info("sample grids off: no usable VAE weights (%s)", str(e).split(". ")[0])
            return None
        if ae.config.embed_dim != uvit.config.in_chans:
            log.info("sample grids off: the VAE's %d latent channels do not fit the backbone's %d",
                     ae.config.embed_dim, uvit.config.in_chans)
            return None
        val = read_validation(val_shards, config.val_identities, uvit.config)
        if val is None:
            log.info("sample grids off: no readable validation sample")
            return None
        return cls(uvit, ae, val, steps=config.sample_steps, cfg=config.sample_cfg, device=device)

    @torch.no_grad()
    def __call__(self, identity) -> torch.Tensor:
        from torchvision.utils import make_grid

        c = self.uvit.config
        z_shape, n = (c.in_chans, c.img_size, c.img_size), self.text.shape[0]
        net = IDConditionedUViT(self.uvit, identity)
        flip = self.face_flip[:, None] if identity.config.use_flip else None
        tokens = identity.tokens(pool_embeddings(self.face[:, None], flip))
        columns = []
        for id_tokens in (None, tokens):
            gen = torch.Generator(self.device).manual_seed(0)  # the same noise for both columns and every grid
            eps_fn = identity_guided_eps_fn(net, self.text, id_tokens, z_shape=z_shape, clip_dim=c.clip_img_dim,
                                            scale=self.cfg, generator=gen)
            with self.execution.autocast():
                z, _ = sample_joint(eps_fn, n, z_shape=z_shape, clip_dim=c.clip_img_dim, steps=self.steps,
                                    schedule=self.schedule, generator=gen, device=self.device)
            columns.append((0.5 * (self.autoencoder.decode(z) + 1.0)).clamp(0, 1))
        images = torch.stack(columns, dim=1).flatten(0, 1)  # [n * 2, 3, H, W], row-major
        return make_grid(images.float().cpu(), nrow=2, padding=2, pad_value=1.0)
