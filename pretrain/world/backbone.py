"""The world's backbone: models.uvit.UViT (world config) trained from scratch with UniDiffuser's joint objective.

    python -m pretrain.world train backbone --out runs/world --world checkpoints/world --minutes 9

Needs the world-CLIP (<world>/world_clip/, the clip stage), frozen. One step on a batch of training
renders (pixel space: the latent z0 is the image x in [-1, 1] times a gain, models.pixel_space):

    z0 = g x (models.pixel_space with signal_scale g: the world's noise schedule shifted towards noise)
    clip0 = world-CLIP image embedding [B, 1, 64]         text0 = prefix features of the caption [B, 24, 32]
    n_img ~ U{1..1000}; z_n, clip_n = noised z0, clip0 (one timestep for both, noises eps_z, eps_c)
    text: with p_clean_text clean (t_text = 0), with p_noise_text N(0, I) at t_text = 1000 (the
          "true_uncond" pass of text-to-image), otherwise t_text ~ U{1..1000} and text_n = noised text0
    loss = w(n_img) [mse(eps_z) + mse(eps_c)] + mse(eps_text) (the text term only where the text was
           noised at a uniform timestep), data_type 1, per sample, then averaged
    w = encoder.objective.timestep_weights: 1 + 1/SNR ("v", the default here) or 1 ("eps")

The plain noise MSE ("eps") gives the high-noise timesteps, where the prompt decides the image,
almost no weight (their noise MSE is two orders of magnitude below the low-noise ones): the first
3,159 steps of the world's backbone learnt to denoise and not to follow its prompt at all. The "v"
weighting is the noise MSE with the velocity objective's weights, so the model and its sampler still
predict noise. Even so the prompt barely mattered: at UniDiffuser's noisiest timestep a 64x64 image's
large colour areas are still readable, so the model took the image's colours from the noise (and, when
sampling, from the pure noise it starts from). The pixel space's gain g = signal_scale < 1 lowers
every timestep's signal-to-noise ratio by g^2 (see models.pixel_space). That drowns the small details
with the large areas: `--level-gains` gives each Haar band of the image its own gain instead (the
coarse bands low, for the prompt; the fine ones high, for the details), z0 = G x.

The world's backbone was made by a chain of runs that began with the plain noise MSE and only later took
the "v" weighting. Its settings from the first step (band gains, final conv, "v") did not learn in a
from-scratch test (checkpoints/world/README.md); the "v" weights, in the hundreds at the noisiest timesteps,
are the likely cause. `eps_steps` weights the first steps "eps", then the run's weighting takes over (the
chain's order in one run; part of the run's config). The defaults are that recipe (3,000 "eps" steps, band
gains, final conv), the one shown to learn to follow the prompt from scratch; its length is about the
chain's. A continued run (`--init-from`) has learnt to denoise already: its "eps" steps default to none, and
it keeps the pixel space exported beside its weights (its gains are what the weights were trained on).

The face is a small part of a 64 px render, and what the prompt names inside it (an expression, glasses)
is a few pixels wide. `--face-weight W` weights the image term's squared error W times as much inside the
render's face box (widened by common.FACE_MARGIN of its size on each side) as outside, per image normalised to a
mean weight of 1, so that the term's scale stays that of the plain mean (1, the default, is the plain mean).

Rendering a batch can cost more than the step that trains on it (eval.bench.world_backbone):
`--batch-reuse R` trains R steps on each rendered and conditioned batch, each with its own noise and
timesteps, so that the renders limit the rate R times less.

The two text end points are the ones text-to-image uses (conditional and unconditional pass); giving
them extra mass focuses a short run on text-to-image while the uniform part keeps the joint
objective (p_clean_text = p_noise_text = 0 is UniDiffuser's plain independent-timestep objective).
Training runs in bf16 autocast on CUDA with AdamW (U-ViT's settings: weight decay 0.03, clipped
gradients, linear warm-up then cosine) and an EMA; the export is the EMA in fp16:

    <world>/models/uvit_v1.safetensors  <world>/models/pixel_space.safetensors  <world>/model_configs.json

after which models.pipeline.UniDiffuserT2I.from_pretrained(<world>) samples text-to-image (a grid of
sample prompts is written to <out>/backbone/samples.png as a check).

`--space autoencoder` trains the same UViT with the same objective in the latent of the world's
AutoencoderKL (<world>/autoencoder/, pretrain.world.autoencoder), as UniDiffuser denoises its VAE's latent:
z0 = scale x the posterior mean, the patch side by default as many latent pixels as give the pixel space's
token count. The export writes <world>/models/autoencoder_kl.safetensors (and removes the pixel space's file)
instead; the pipeline, sampler and evaluations run unchanged. The band gains are the pixel space's only; the
face weight maps the face box onto the latent's cells (batch_face_weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from encoder.objective import timestep_weights
from models.errors import UserError
from models.noise_schedule import NoiseScheduleVP
from models.paths import read_model_configs
from models.pixel_space import PixelSpace, PixelSpaceConfig, is_pixel_space_config
from models.uvit import UViT, UViTConfig
from models.weights import save_state_dict
from models.world_clip import load_world_clip
from pretrain.ema import EMA
from pretrain.world.common import (
    EMAStage,
    StageOptions,
    WorldData,
    as_json_config,
    batch_face_weights,
    merge_model_configs,
    overridden,
    param_groups,
)

CLIP_DIR = "world_clip"
PIXEL_SPACE_FILE = "pixel_space.safetensors"
AUTOENCODER_FILE = "autoencoder_kl.safetensors"  # models.paths finds the world's autoencoder under this name
SAMPLE_PROMPTS = ("a photo of a man", "a photo of a woman wearing sunglasses", "a painting of a girl, smiling",
                  "a photo of a boy wearing a red cap", "a sketch of a man in the desert",
                  "a photo of a woman under the sea", "a photo of a man in a green sweater in the snow",
                  "a photo of a surprised girl in outer space")


@dataclass(frozen=True)
class BackboneConfig:
    """Training settings of the backbone stage (the UViT's own config is derived from the world-CLIP)."""

    embed_dim: int = 256
    depth: int = 8
    num_heads: int = 4
    patch_size: int = 4
    batch_size: int = 512
    total_steps: int = 40_000  # about the committed chain's 43,339 steps (checkpoints/world/README.md)
    lr: float = 3e-4
    warmup_steps: int = 500
    weight_decay: float = 0.03
    ema_decay: float = 0.9995
    p_clean_text: float = 0.75
    p_noise_text: float = 0.15
    data_type: int = 1
    timestep_weighting: str = "v"  # "v" (1 + 1/SNR) or "eps" (plain noise MSE): see the module docstring
    eps_steps: int = 3000  # the first steps weighted "eps" before timestep_weighting takes over; `--eps-steps`
    signal_scale: float = 0.3  # the pixel space's one gain g when level_gains is empty (models.pixel_space)
    level_gains: tuple[float, ...] = (1.0, 1.0, 0.6, 0.3)  # per Haar band, finest first; `--level-gains`
    conv: bool = True  # U-ViT's final 3x3 conv (UViTConfig.conv); `--final-conv` / `--no-final-conv`
    batch_reuse: int = 1  # each rendered batch trains this many steps (fresh noise and timesteps); `--batch-reuse`
    face_weight: float = 1.0  # the image term's weight inside the face region relative to outside; `--face-weight`
    space: str = "pixel"  # "pixel" (models.pixel_space) or "autoencoder" (the world's AutoencoderKL); `--space`

    @classmethod
    def tiny(cls) -> BackboneConfig:
        return cls(embed_dim=32, depth=2, num_heads=2, patch_size=16, batch_size=4, total_steps=3, warmup_steps=1,
                   ema_decay=0.5, eps_steps=1)


def world_uvit_config(c: BackboneConfig, text_dim: int, context_length: int, clip_dim: int,
                      img_size: int = 64, in_chans: int = 3) -> UViTConfig:
    """The world's UViT on latents of img_size x img_size x in_chans (the pixel space: 64 x 64 x 3), with the
    text and CLIP-image widths of the world-CLIP."""
    return UViTConfig(img_size=img_size, in_chans=in_chans, patch_size=c.patch_size, embed_dim=c.embed_dim,
                      depth=c.depth, num_heads=c.num_heads, mlp_ratio=4.0, text_dim=text_dim,
                      num_text_tokens=context_length, clip_img_dim=clip_dim, conv=c.conv)


def init_uvit(model: UViT) -> UViT:
    """U-ViT's initialisation for training from scratch: truncated normal (std 0.02) for linear weights
    and the position embeddings, zero biases, unit LayerNorms."""
    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    model.apply(init)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.pos_embed_token, std=0.02)
    return model


def identity_conv_state(conv: nn.Conv2d) -> dict[str, torch.Tensor]:
    """{final_layer.weight, final_layer.bias} of a 3x3 conv that passes its input through unchanged: a
    run continued from weights without U-ViT's final conv starts where those weights were."""
    weight = torch.zeros_like(conv.weight)
    channels = torch.arange(weight.shape[0])
    weight[channels, channels, 1, 1] = 1.0
    return {"final_layer.weight": weight, "final_layer.bias": torch.zeros_like(conv.bias)}


def joint_loss(uvit: nn.Module, z0: torch.Tensor, clip0: torch.Tensor, text0: torch.Tensor,
               schedule: NoiseScheduleVP, c: BackboneConfig, generator: torch.Generator,
               weighting: str | None = None,
               pixel_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """UniDiffuser's joint noise-prediction loss of one batch (see the module docstring).

    z0 [B, 3, H, W], clip0 [B, 1, Dc], text0 [B, L, Dt] float32 on the generator's device; weighting: the
    timestep weighting of the image and CLIP-image terms (default c.timestep_weighting); pixel_weight:
    [B, 1, H, W] weights of the image term's squared error, each image's averaging 1 (face_weight_map;
    None: the plain mean).
    Returns (loss, {"loss_z", "loss_clip", "loss_text"} detached).
    """
    b, device = z0.shape[0], z0.device
    n_img = schedule.sample_timesteps(b, generator=generator, device=device)
    n_text = schedule.sample_timesteps(b, generator=generator, device=device)
    eps_z = torch.randn(z0.shape, generator=generator, device=device)
    eps_c = torch.randn(clip0.shape, generator=generator, device=device)
    eps_t = torch.randn(text0.shape, generator=generator, device=device)
    u = torch.rand(b, generator=generator, device=device)
    clean = u < c.p_clean_text
    noise = (u >= c.p_clean_text) & (u < c.p_clean_text + c.p_noise_text)
    uniform = ~(clean | noise)
    n_text = torch.where(clean, torch.zeros_like(n_text), torch.where(noise, torch.full_like(n_text,
                                                                                            schedule.total_N), n_text))
    text_n = torch.where(rearrange(clean, "b -> b 1 1"), text0,
                         torch.where(rearrange(noise, "b -> b 1 1"), eps_t, schedule.add_noise(text0, eps_t, n_text)))
    z_n, clip_n = schedule.add_noise(z0, eps_z, n_img), schedule.add_noise(clip0, eps_c, n_img)
    data_type = torch.full((b,), c.data_type, dtype=torch.long, device=device)
    pred_z, pred_c, pred_t = uvit(z_n, clip_n, text_n, n_img.float(), n_text.float(), data_type)
    sq_z = (pred_z.float() - eps_z) ** 2
    loss_z = (sq_z if pixel_weight is None else sq_z * pixel_weight).mean(dim=(1, 2, 3))
    loss_c = ((pred_c.float() - eps_c) ** 2).mean(dim=(1, 2))
    if (tw := timestep_weights(schedule, n_img, weighting or c.timestep_weighting)) is not None:
        loss_z, loss_c = loss_z * tw, loss_c * tw
    loss_z, loss_c = loss_z.mean(), loss_c.mean()
    per_text = ((pred_t.float() - eps_t) ** 2).mean(dim=(1, 2))
    w = uniform.float()
    loss_t = (per_text * w).sum() / w.sum().clamp_min(1.0)
    loss = loss_z + loss_c + loss_t
    return loss, {"loss_z": loss_z.detach(), "loss_clip": loss_c.detach(), "loss_text": loss_t.detach()}


def pixel_space_config(c: BackboneConfig, channels: int) -> PixelSpaceConfig:
    """The pixel space a backbone run trains on (with level gains they are absolute: signal_scale 1)."""
    if c.level_gains:
        return PixelSpaceConfig(embed_dim=channels, level_gains=c.level_gains)
    return PixelSpaceConfig(embed_dim=channels, signal_scale=c.signal_scale)


def exported_pixel_space(weights: Path) -> PixelSpaceConfig | None:
    """The pixel space exported beside these UViT weights (<world>/model_configs.json for
    <world>/models/uvit_v1.safetensors), or None when the weights stand alone."""
    entry = read_model_configs(Path(weights).parent.parent).get("autoencoder")
    return PixelSpaceConfig.from_dict(entry) if is_pixel_space_config(entry) else None


def exported_space(weights: Path) -> str | None:
    """"pixel" or "autoencoder": the latent space exported beside these UViT weights (None: they stand alone)."""
    entry = read_model_configs(Path(weights).parent.parent).get("autoencoder")
    if entry is None:
        return None
    return "pixel" if is_pixel_space_config(entry) else "autoencoder"


LATENT_FILES = {"pixel": PIXEL_SPACE_FILE, "autoencoder": AUTOENCODER_FILE}


def write_latent_space(world: Path, space: nn.Module) -> Path:
    """The world's latent space, <world>/models/<LATENT_FILES file> and its model_configs.json entry
    ("autoencoder"): the pixel space, or the world's AutoencoderKL (fp16). The other space's file is removed,
    since models.paths would find it too."""
    kind = "pixel" if isinstance(space, PixelSpace) else "autoencoder"
    path = world / "models" / LATENT_FILES[kind]
    dtype = torch.float32 if kind == "pixel" else torch.float16
    save_state_dict({k: v.detach().to("cpu", dtype) for k, v in space.state_dict().items()}, path)
    for other, name in LATENT_FILES.items():
        if other != kind:
            (world / "models" / name).unlink(missing_ok=True)
    merge_model_configs(world, {"autoencoder": as_json_config(space.config)})
    return path


class AutoencoderLatent(nn.Module):
    """The world's AutoencoderKL as the backbone's latent space: latent(x) = scale x the posterior mean (the
    KL term keeps its spread negligible), as PixelSpace.latent is for pixels. With --batch-reuse R a rendered
    batch is encoded once for its R steps: BackboneStage.conditioned_batch keeps its latent."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        self.config = autoencoder.config

    @torch.no_grad()
    def latent(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.latent(pixels).float()

    def state_dict(self, *args, **kwargs):  # the AutoencoderKL's own keys (what models.autoencoder loads)
        return self.autoencoder.state_dict(*args, **kwargs)


class BackboneStage(EMAStage):
    """Trains the world's UViT; exports it (EMA, fp16), its latent space and model_configs.json."""

    name = "backbone"

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        c = self.sized(BackboneConfig(), BackboneConfig.tiny())
        if opts.init_from is not None:
            c = dataclasses.replace(c, warmup_steps=min(c.warmup_steps, 100))
        c = overridden(c, conv=opts.final_conv, face_weight=opts.face_weight,
                       batch_reuse=None if opts.batch_reuse == 1 else opts.batch_reuse, lr=opts.lr)
        space = opts.space or (exported_space(opts.init_from) if opts.init_from is not None else None) or c.space
        c = dataclasses.replace(c, space=space)
        if space == "autoencoder" and opts.level_gains is not None:
            raise UserError("--level-gains applies to the pixel space only, not --space autoencoder")
        if opts.level_gains is not None:
            c = dataclasses.replace(c, level_gains=tuple(opts.level_gains))
        elif opts.init_from is not None and (exported := exported_pixel_space(opts.init_from)) is not None:
            # a continuation keeps the pixel space its weights were trained on, not the defaults
            c = dataclasses.replace(c, level_gains=exported.level_gains, signal_scale=exported.signal_scale)
        if opts.eps_steps is not None or opts.init_from is not None:  # a continuation has learnt to denoise
            c = dataclasses.replace(c, eps_steps=opts.eps_steps or 0)
        if opts.patch_size is not None:
            if opts.init_from is not None:
                raise UserError("--patch-size with --init-from: a continued run keeps the exported weights' patch "
                                "size; start a new run for another one")
            c = dataclasses.replace(c, patch_size=opts.patch_size)
        clip_dir = opts.world / CLIP_DIR
        if not (clip_dir / "config.json").is_file():
            raise UserError(f"the backbone needs the world-CLIP in {clip_dir}",
                            hint=f"run `python -m pretrain.world train clip --world {opts.world}` first")
        self.tokenizer, self.clip = load_world_clip(clip_dir, device=self.device, dtype=torch.float32)
        cc = self.clip.config
        side, chans = cc.image_size, 3
        if space == "autoencoder":
            from pretrain.world.autoencoder import load_world_autoencoder

            self.pixel = AutoencoderLatent(load_world_autoencoder(opts.world, self.device))
            f = self.pixel.config.downsample_factor
            side, chans = cc.image_size // f, self.pixel.config.embed_dim
            if opts.patch_size is None:  # as many image tokens as the pixel space's patches give
                c = dataclasses.replace(c, patch_size=max(1, c.patch_size // f))
        self.c = c
        if c.patch_size < 1 or side % c.patch_size:
            raise UserError(f"--patch-size {c.patch_size} does not tile the backbone's {side} x {side} latents",
                            hint=f"use a divisor of {side}")
        self.uvit_config = world_uvit_config(c, cc.text_dim, cc.context_length, cc.embed_dim, side, chans)
        if space == "pixel":
            self.pixel = PixelSpace(pixel_space_config(c, chans)).to(self.device)
            if cc.image_size % self.pixel.config.block:
                raise UserError(f"--level-gains: {len(c.level_gains)} bands need image sides that are multiples of "
                                f"{self.pixel.config.block}, not {cc.image_size}", hint="give fewer gains")
        self.set_steps(c.total_steps, c.batch_size, c.lr, c.warmup_steps)
        torch.manual_seed(opts.seed)
        self.uvit = init_uvit(UViT(self.uvit_config))
        if opts.init_from is not None:  # a continued run: the exported weights, fp16 -> fp32
            from models.weights import load_strict, read_state_dict

            if not Path(opts.init_from).is_file():
                raise UserError(f"--init-from: no weights file {opts.init_from}")
            state = {k: v.float() for k, v in read_state_dict(opts.init_from, "the world UViT").items()}
            if self.uvit.final_layer is not None and "final_layer.weight" not in state:
                state.update(identity_conv_state(self.uvit.final_layer))  # adding the conv changes nothing yet
            load_strict(self.uvit, state, opts.init_from, "the world UViT")
        self.uvit = self.uvit.to(self.device).train()
        # The training forward may run compiled; the module itself (weights, EMA, export) stays the eager one.
        self.step_model = torch.compile(self.uvit) if opts.compile and self.device.type == "cuda" else self.uvit
        self.ema = EMA(self.uvit, c.ema_decay)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(param_groups(self.uvit, c.weight_decay), lr=c.lr, betas=(0.9, 0.99), **fused)
        self.noise = NoiseScheduleVP.stable_diffusion()
        self.data = WorldData(opts.seed, self.name, c.batch_size, self.device, size=cc.image_size,
                              render_workers=opts.render_workers)
        self._conditioned: tuple | None = None  # (k, pixels, latent, clip0, text0, pixel weights) of batch k
        # The latent space is frozen and the UViT's shape is known: both written now, so that
        # data_prep can write the identity stage's shards (and pretrain.train --random_backbone time
        # its step) while the backbone trains.
        write_latent_space(opts.world, self.pixel)
        merge_model_configs(opts.world, {"uvit": as_json_config(self.uvit_config)})
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def modules(self):
        return {"model": self.uvit, "ema": self.ema.shadow}

    def optimizer(self):
        return self.opt

    def config(self) -> dict:
        return {"train": dataclasses.asdict(self.c), "uvit": as_json_config(self.uvit_config)}

    @torch.no_grad()
    def condition(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen world-CLIP: (image embedding [B, 1, Dc], caption prefix features [B, L, Dt]), float32."""
        ids = self.tokenizer(captions).to(self.device)
        with self.autocast():
            clip0 = self.clip.encode_image(pixels).float()
            text0 = self.clip.text_features(ids).float()
        return rearrange(clip0, "b d -> b 1 d"), text0

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float | torch.Tensor]:
        lr = self.set_lr(self.opt, step)
        pixels, z0, clip0, text0, pixel_weight = self.conditioned_batch(step // self.c.batch_reuse)
        weighting = "eps" if step < self.c.eps_steps else self.c.timestep_weighting
        return {**self.optimize_on(pixels, clip0, text0, generator, self.step_model, weighting, pixel_weight,
                                   latent=z0), "lr": lr}

    def conditioned_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor | None]:
        """(pixels, latent, clip0, text0, pixel weights) of rendered batch k, kept for the batch_reuse steps that
        train on it: with reuse R, steps kR .. kR + R - 1 share batch k (a resumed run renders it again: the same
        batch). The latent is the space's encode of the pixels, made once a batch (in an autoencoder's latent,
        its encoder's pass); the pixel weights are face_weight_map's (None when face_weight is 1)."""
        if self._conditioned is None or self._conditioned[0] != k:
            batch = self.data.get(k)
            with torch.no_grad(), self.autocast():
                z0 = self.pixel.latent(batch.pixels)  # the space's latent (its encode, less its sampling noise)
            weights = batch_face_weights(batch, self.c.face_weight, z0.shape[-1])  # over the latent's cells
            self._conditioned = (k, batch.pixels, z0, *self.condition(batch.pixels, batch.captions), weights)
        return self._conditioned[1:]

    def optimize_on(self, pixels: torch.Tensor, clip0: torch.Tensor, text0: torch.Tensor,
                    generator: torch.Generator, model: nn.Module | None = None,
                    weighting: str | None = None, pixel_weight: torch.Tensor | None = None,
                    latent: torch.Tensor | None = None) -> dict[str, float | torch.Tensor]:
        """One optimizer step of the joint objective on a conditioned batch, then the EMA update. `model`
        (default the UViT) may be a compiled view of it (eval.bench.world_backbone times both); `weighting`
        replaces the config's timestep weighting (the --eps-steps phase); `pixel_weight` weights the image
        term (face_weight_map); `latent`: the pixels' latent when already made (conditioned_batch), else it is
        made here."""
        model = self.uvit if model is None else model
        with self.autocast():
            z0 = self.pixel.latent(pixels) if latent is None else latent
            loss, terms = joint_loss(model, z0, clip0, text0, self.noise, self.c, generator, weighting,
                                     pixel_weight)
        grad = self.optimize(self.opt, loss, self.uvit.parameters())
        self.ema.update(self.uvit)
        return {"loss": loss.detach(), **terms, "grad": grad}

    # ---- export -------------------------------------------------------------------------------------------
    def export_paths(self, world: Path) -> list[Path]:
        return [world / "models" / "uvit_v1.safetensors", world / "models" / LATENT_FILES[self.c.space],
                world / "model_configs.json"]

    def export(self, world: Path) -> list[Path]:
        uvit_path, pixel_path, configs_path = self.export_paths(world)
        save_state_dict({k: v.detach().to("cpu", torch.float16) for k, v in self.ema.shadow.state_dict().items()},
                        uvit_path)
        write_latent_space(world, self.pixel)
        merge_model_configs(world, {"uvit": as_json_config(self.uvit_config)})
        self.sample_grid(world)
        return [uvit_path, pixel_path, configs_path]

    @torch.no_grad()
    def sample_grid(self, world: Path) -> Path:
        """SAMPLE_PROMPTS through the exported world (models.pipeline, guidance 3, 20 steps), one row of
        4 images each, to <out>/backbone/samples.png: a check that the folder loads and samples."""
        from PIL import Image

        from models.pipeline import UniDiffuserT2I

        pipe = UniDiffuserT2I.from_pretrained(world, device=self.device)
        prompts = SAMPLE_PROMPTS[:2] if self.opts.tiny else SAMPLE_PROMPTS
        rows = pipe(list(prompts), n_per_prompt=4, steps=4 if self.opts.tiny else 20, scale=3.0, seed=0)
        size = pipe.image_size
        grid = Image.new("RGB", (4 * size, len(rows) * size))
        for r, images in enumerate(rows):
            for k, im in enumerate(images):
                grid.paste(im, (k * size, r * size))
        path = self.opts.out / self.name / "samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        (path.parent / "samples.txt").write_text("\n".join(prompts) + "\n")
        return path
