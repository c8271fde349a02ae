"""The world's autoencoder: models.autoencoder.AutoencoderKL (a small config) trained on training renders.

    python -m pretrain.world train autoencoder --out runs/world --world checkpoints/world [--minutes 9] [--tiny]

UniDiffuser denoises in the latent of a KL autoencoder, whose decoder draws the fine detail (eyes, mouths,
glasses frames) from a compact latent; the world's pixel space (models.pixel_space) leaves every pixel to
the UViT's per-patch linear output. This stage makes the autoencoder the world can use instead: the
project's AutoencoderKL with a small config (4x downsampling, 4 latent channels: 64 x 64 renders become
16 x 16 x 4 latents), trained on renders of training identities with an L1 reconstruction loss (optionally
weighed more inside the face box, `--face-weight`, where the details prompts name live) and a small KL term
(no perceptual or adversarial loss: the renders are flat-shaded drawings, and those losses need networks
this world does not have). At export the latent is standardised per channel (`standardised`: each
channel's mean and spread over a few batches are folded into the 1x1 convolutions around the latent, and the
scale factor is 1), where Stable Diffusion scales all channels by one factor (0.18215).

Exported to <world>/autoencoder/ (config.json: the AutoencoderConfig, scale factor included, and the
training record; model.safetensors in fp16). It is a foundation model like the world-CLIP: nothing else
reads it until a backbone is trained in its latent (`train backbone --space autoencoder`), whose export
puts it into <world>/models/ as the world's autoencoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from models.autoencoder import AutoencoderConfig, AutoencoderKL
from models.errors import UserError
from models.weights import save_state_dict
from pretrain.ema import EMA
from pretrain.world.common import (
    EMAStage,
    StageOptions,
    WorldData,
    as_json_config,
    batch_face_weights,
    overridden,
    param_groups,
    write_json,
)

EXPORT_DIR = "autoencoder"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SCALE_BATCHES = 8  # batches of training renders the exported standardisation is measured on


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """The network (`ch`, `ch_mult`, `num_res_blocks`, `embed_dim`: AutoencoderConfig's fields) and its training."""

    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)  # 4x downsampling
    num_res_blocks: int = 1
    embed_dim: int = 4
    batch_size: int = 256
    total_steps: int = 6000
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    kl_weight: float = 1e-6
    ema_decay: float = 0.999
    batch_reuse: int = 1  # each rendered batch trains this many steps (rendering limits the rate); `--batch-reuse`
    face_weight: float = 1.0  # the L1 inside the widened face box, relative to outside; `--face-weight`

    @classmethod
    def tiny(cls) -> AutoencoderTrainConfig:
        return cls(ch=32, ch_mult=(1, 2), batch_size=4, total_steps=3, warmup_steps=1, ema_decay=0.5)

    def network(self, image_size: int, scale_factor: float = 1.0) -> AutoencoderConfig:
        return AutoencoderConfig(ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                                 z_channels=self.embed_dim, embed_dim=self.embed_dim, resolution=image_size,
                                 scale_factor=scale_factor)


def kl_term(moments: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) per latent element, averaged: moments [B, 2E, h, w] (mean, log-variance)."""
    mean, logvar = moments.float().chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def reconstruction_loss(model: AutoencoderKL, pixels: torch.Tensor, kl_weight: float,
                        generator: torch.Generator,
                        pixel_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 of decode(sample(encode(x))) against x (x in [-1, 1]) + kl_weight x KL; (loss, detached terms).
    pixel_weight: [B, 1, H, W] weights of the L1, each image's averaging 1 (common.face_weight_map)."""
    moments = model.encode_moments(pixels)
    z = model.sample(moments, generator)
    recon = model.decode(z)
    err = (recon.float() - pixels).abs()
    l1 = (err if pixel_weight is None else err * pixel_weight).mean()
    kl = kl_term(moments)
    return l1 + kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}


class AutoencoderStage(EMAStage):
    """Trains the world's AutoencoderKL; exports it (EMA, fp16, its latent standardised) to <world>/autoencoder/."""

    name = "autoencoder"

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        c = self.sized(AutoencoderTrainConfig(), AutoencoderTrainConfig.tiny())
        levels = None if opts.downsample is None else c.ch_mult[:1] + (2,) * (opts.downsample.bit_length() - 1)
        self.c = c = overridden(c, batch_size=opts.batch_size, face_weight=opts.face_weight, ch_mult=levels,
                                embed_dim=opts.latent_channels,
                                batch_reuse=None if opts.batch_reuse == 1 else opts.batch_reuse)
        self.image_size = 64
        if self.image_size % (2 ** (len(c.ch_mult) - 1)):
            raise UserError(f"{len(c.ch_mult) - 1} downsamplings do not tile {self.image_size} px renders")
        self.set_steps(c.total_steps, c.batch_size, c.lr, c.warmup_steps)
        torch.manual_seed(opts.seed)
        self.model = AutoencoderKL(c.network(self.image_size)).to(self.device).train()
        self.ema = EMA(self.model, c.ema_decay)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(param_groups(self.model, c.weight_decay), lr=c.lr, betas=(0.9, 0.99), **fused)
        self.data = WorldData(opts.seed, self.name, c.batch_size, self.device, size=self.image_size,
                              render_workers=opts.render_workers)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            if opts.compile:
                self.compile_model()

    def compile_model(self) -> None:
        """The encoder's and decoder's calls run under torch.compile (nn.Module.compile: in place, so the
        weights, their state-dict keys, the EMA and the checkpoints stay the eager modules')."""
        self.model.encoder.compile()
        self.model.decoder.compile()

    def modules(self):
        return {"model": self.model, "ema": self.ema.shadow}

    def optimizer(self):
        return self.opt

    def config(self) -> dict:
        return {"train": dataclasses.asdict(self.c), "autoencoder": as_json_config(self.model.config)}

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float | torch.Tensor]:
        lr = self.set_lr(self.opt, step)
        batch = self.data.get(step // self.c.batch_reuse)  # with reuse R, steps kR .. kR + R - 1 share batch k
        return {**self.optimize_on(batch.pixels, generator, batch_face_weights(batch, self.c.face_weight)),
                "lr": lr}

    def optimize_on(self, pixels: torch.Tensor, generator: torch.Generator,
                    pixel_weight: torch.Tensor | None = None) -> dict[str, float | torch.Tensor]:
        """One optimizer step of the reconstruction loss on a batch, then the EMA update (eval.bench.
        world_autoencoder times it alone)."""
        with self.autocast():
            loss, terms = reconstruction_loss(self.model, pixels, self.c.kl_weight, generator, pixel_weight)
        grad = self.optimize(self.opt, loss, self.model.parameters())
        self.ema.update(self.model)
        return {"loss": loss.detach(), **terms, "grad": grad}

    # ---- export -------------------------------------------------------------------------------------------
    def export_paths(self, world: Path) -> list[Path]:
        return [world / EXPORT_DIR / CONFIG_FILE, world / EXPORT_DIR / WEIGHTS_FILE]

    def export(self, world: Path) -> list[Path]:
        ema = self.ema.shadow.eval()
        statistics = latent_statistics(ema, self.data, 1 if self.opts.tiny else SCALE_BATCHES)
        model = standardised(ema, *statistics)
        paths = write_export(world, model, statistics, {"train": dataclasses.asdict(self.c)})
        self.reconstruction_grid(model)
        return paths

    @torch.no_grad()
    def reconstruction_grid(self, model: AutoencoderKL) -> Path:
        """Eight renders over their reconstructions through the exported (fp16) weights, to
        <out>/autoencoder/reconstructions.png: a check of what the latent keeps."""
        exported = AutoencoderKL(model.config).to(self.device).eval()
        exported.load_state_dict({k: v.to(torch.float16).float() for k, v in model.state_dict().items()})
        pixels = self.data.make(0, "check", batch_size=8).pixels
        recon = exported.decode(exported.latent(pixels))
        rows = [((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1) for x in (pixels, recon)]
        grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0).cpu().numpy()  # [2H, 8W, 3]
        path = self.opts.out / self.name / "reconstructions.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return path


# ---- the exported latent: standardised per channel --------------------------------------------------------
@torch.no_grad()
def latent_statistics(model: AutoencoderKL, data: WorldData, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation [E] of the posterior means over `batches` batches of the data's
    "export" stream of training renders (not the training batches)."""
    means = torch.cat([model.encode_moments(data.make(k, "export").pixels).float().chunk(2, dim=1)[0]
                       for k in range(batches)])
    return means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3))


@torch.no_grad()
def standardised(model: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> AutoencoderKL:
    """The same autoencoder (a copy), its latent standardised per channel: (posterior mean - mean) / std, the
    log-variance less 2 log std, folded into quant_conv; post_quant_conv takes the standardised latent back
    (std x z + mean, folded too), so that decode(latent(x)) is unchanged; scale_factor 1.

    One scale factor (Stable Diffusion's 0.18215) leaves each channel's offset and spread as they come: a
    channel far from zero with a small spread carries little content for its share of the latent's variance,
    and a backbone's noise drowns that content sooner than its schedule assumes (the committed autoencoder's
    figures are in checkpoints/world/README.md)."""
    import copy

    out = copy.deepcopy(model).float()
    e, inv = out.config.embed_dim, 1.0 / std.clamp_min(1e-6)
    q, p = out.quant_conv, out.post_quant_conv
    mean, std, inv = (t.to(q.weight.device, torch.float32) for t in (mean, std, inv))
    q.weight[:e] *= inv[:, None, None, None]
    q.bias[:e] = (q.bias[:e] - mean) * inv
    q.bias[e:] -= 2.0 * torch.log(std.clamp_min(1e-6))
    p.bias += p.weight[:, :, 0, 0] @ mean
    p.weight *= std[None, :, None, None]
    out.config = dataclasses.replace(out.config, scale_factor=1.0)
    return out


def write_export(world: Path, model: AutoencoderKL, statistics: tuple[torch.Tensor, torch.Tensor],
                 record: dict) -> list[Path]:
    """<world>/autoencoder/: model.safetensors (fp16) and config.json (the AutoencoderConfig, the latent's
    per-channel mean and std that `model` was standardised with (`standardised`), and `record`, e.g. the
    training config)."""
    mean, std = (t.tolist() for t in statistics)
    folder = Path(world) / EXPORT_DIR
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    save_state_dict({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()},
                    weights)
    write_json(config, {"format": "world-autoencoder", "autoencoder": as_json_config(model.config),
                        "latent_standardised": {"mean": mean, "std": std}, **record})
    return [config, weights]


def standardise_export(world: Path, seed: int = 0, batches: int = SCALE_BATCHES) -> list[Path]:
    """Export <world>/autoencoder/ again with its latent standardised per channel (`standardised`), measured on
    the renders the stage's own export measures (the "export" stream of world seed `seed`): for an export
    made before exports were standardised. Refused (UserError) for one that already is."""
    info = read_config(Path(world) / EXPORT_DIR)
    if "latent_standardised" in info:
        raise UserError(f"the autoencoder in {Path(world) / EXPORT_DIR} is already standardised")
    model = load_world_autoencoder(world)
    data = WorldData(seed, "autoencoder", int(info["train"]["batch_size"]), torch.device("cpu"),
                     size=model.config.resolution)
    record = {k: v for k, v in info.items() if k not in ("format", "autoencoder")}
    record["standardised_after_export"] = {"previous_scale_factor": model.config.scale_factor, "seed": seed,
                                           "batches": batches}
    statistics = latent_statistics(model, data, batches)
    return write_export(world, standardised(model, *statistics), statistics, record)


def load_world_autoencoder(world: Path, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The frozen autoencoder of <world>/autoencoder/ (fp32, eval); UserError when the stage has not run."""
    from models.weights import load_frozen

    folder = Path(world) / EXPORT_DIR
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserError(f"no world autoencoder in {folder}",
                        hint=f"run `python -m pretrain.world train autoencoder --world {world}` first")
    config = AutoencoderConfig.from_dict(read_config(folder)["autoencoder"])
    return load_frozen(lambda: AutoencoderKL(config), folder / WEIGHTS_FILE, "the world autoencoder",
                       device=device, dtype=torch.float32)


def read_config(folder: Path) -> dict:
    import json

    return json.loads((Path(folder) / CONFIG_FILE).read_text())
