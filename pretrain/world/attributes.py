"""The world's attribute classifier: a small CNN that reads a 64x64 render's editable attributes.

    python -m pretrain.world train attributes --out runs/world --world checkpoints/world [--minutes 9] [--tiny]
        [--init-from <world>/attributes] [--batch-size B] [--total-steps N]

`--init-from` continues an exported classifier (its config and weights; a quarter of the learning rate, a
short warm-up), e.g. one trained before the held-out pairs were rendered for it.

One head per attribute of the renderer (data_prep.faceworld.attributes.ATTRIBUTES: scene, hat,
hat_color, glasses, clothing, expression, style) plus the class word (CLASS_WORDS); the heads are read
from the renderer's module, never copied, and the exported config records them so that a classifier
trained on other vocabularies is refused. hat_color is learned and scored only on renders with a hat.

Training renders come from the renderer on the training device, training identities only, with every
combination of values, the renderer's HELD_OUT pairs included (FaceWorld.render's every_pair): the classifier
scores text-to-image on exactly those pairs, so it must read them. One trained without them (as the first
worlds' were) misreads some of them, glasses in a sketch above all (pretrain.world.evaluate's t2i_ceiling
measures how much; checkpoints/world/README.md). No model that is tested on the held-out pairs ever sees
these renders. Light blur and noise make it tolerant of generated images. The frozen
classifier is exported to <world>/attributes/ (config.json + attributes.safetensors, float16; its
`trained.held_out_pairs` says it saw every combination); it scores edit success in pretrain.world.evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.pixels import to_signed
from pretrain.world.common import (
    Stage,
    StageOptions,
    WorldData,
    as_json_config,
    param_groups,
    write_json,
)

EXPORT_DIR = "attributes"
WEIGHTS_FILE = "attributes.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "faceworld-attributes"
CLASS_WORD = "class_word"  # the head of the person's class word (man, woman, boy, girl)
IGNORE = -100  # target of an attribute a render does not have (hat_color without a hat)


def vocabularies() -> dict[str, tuple[str, ...]]:
    """{head name: its values}: the class word, then every attribute of the renderer, in its order."""
    from data_prep.faceworld.attributes import ATTRIBUTES, CLASS_WORDS

    return {CLASS_WORD: tuple(CLASS_WORDS), **{k: tuple(v) for k, v in ATTRIBUTES.items()}}


@dataclass(frozen=True)
class AttributeNetConfig:
    """widths: channels of the stages (the first at full resolution, each further one halves it);
    heads: (name, values) per head; pool: the final feature map is average-pooled to pool x pool
    (a little layout: hats sit high, clothes low) before the linear heads."""

    heads: tuple[tuple[str, tuple[str, ...]], ...]
    widths: tuple[int, ...] = (32, 64, 128, 160)
    image_size: int = 64
    pool: int = 2
    dropout: float = 0.1

    @classmethod
    def world(cls) -> AttributeNetConfig:
        return cls(heads=tuple(vocabularies().items()))

    @classmethod
    def tiny(cls) -> AttributeNetConfig:
        return cls(heads=tuple(vocabularies().items()), widths=(8, 16), pool=1)

    @classmethod
    def from_dict(cls, d: Mapping) -> AttributeNetConfig:
        d = dict(d)
        d["heads"] = tuple((name, tuple(values)) for name, values in d["heads"])
        d["widths"] = tuple(d["widths"])
        return cls(**d)

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.heads)


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class AttributeNet(nn.Module):
    """Images [B, 3, S, S] in [-1, 1] -> {head: logits [B, n_values]}.

    Stage k: 3x3 conv (stride 2 from the second stage on) + 3x3 conv, each with BatchNorm and ReLU;
    then average pooling to [B, C, pool, pool], flattened, dropout, one linear layer per head.
    """

    def __init__(self, config: AttributeNetConfig):
        super().__init__()
        self.config = config
        layers, c = [], 3
        for k, w in enumerate(config.widths):
            layers += [_conv_bn(c, w, 1 if k == 0 else 2), _conv_bn(w, w, 1)]
            c = w
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        dim = c * config.pool * config.pool
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(values)) for name, values in config.heads})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.adaptive_avg_pool2d(self.features(x), self.config.pool)  # [B, C, p, p]
        h = self.dropout(rearrange(h, "b c h w -> b (c h w)"))
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Renderer images uint8 [B, H, W, 3], or float images [B, 3, H, W] in [0, 1] (the pipeline's
    decode) -> float32 [B, 3, H, W] in [-1, 1]."""
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [B, H, W, 3], got {tuple(images.shape)}")
        return to_signed(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
    return images.float() * 2.0 - 1.0


def targets(class_words: Sequence[str], attributes: Sequence[Mapping], heads: AttributeNetConfig,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Per head, int64 [B] value indices (IGNORE where a render lacks the attribute: hat_color None)."""
    out = {}
    for name, values in heads.heads:
        column = class_words if name == CLASS_WORD else [a.get(name) for a in attributes]
        out[name] = torch.tensor([IGNORE if v is None else values.index(v) for v in column], device=device)
    return out


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training views of x [B, 3, S, S] in [-1, 1]: a random horizontal flip, a light Gaussian blur on half
    of the images and a little pixel noise (every attribute survives all three)."""
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 4, generator=generator, device=dev)
    x = torch.where((u[:, 0] < 0.5).view(b, 1, 1, 1), x.flip(-1), x)
    sigma = (0.3 + 0.7 * u[:, 1]).view(b, 1, 1)
    taps = torch.arange(-2, 3, device=dev, dtype=x.dtype).view(1, 1, 5)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # [B, 1, 5]
    blur = rearrange(x, "b c h w -> 1 (b c) h w")
    kx = rearrange(kernel.repeat_interleave(3, 0), "n 1 k -> n 1 1 k")
    blur = F.conv2d(F.pad(blur, (2, 2, 0, 0), mode="replicate"), kx, groups=3 * b)
    blur = F.conv2d(F.pad(blur, (0, 0, 2, 2), mode="replicate"), rearrange(kx, "n 1 1 k -> n 1 k 1"), groups=3 * b)
    blur = rearrange(blur, "1 (b c) h w -> b c h w", b=b)
    x = torch.where((u[:, 2] < 0.5).view(b, 1, 1, 1), blur, x)
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    return (x + 0.06 * u[:, 3].view(b, 1, 1, 1) * noise).clamp(-1.0, 1.0)


def head_loss(logits: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
              label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over heads of the cross-entropy (items with IGNORE left out; a head with none adds 0)
    -> (loss, {head: its loss, detached})."""
    total, parts = 0.0, {}
    for name, y in target.items():
        kept = (y != IGNORE).sum()
        loss = F.cross_entropy(logits[name].float(), y, ignore_index=IGNORE, label_smoothing=label_smoothing,
                               reduction="sum") / kept.clamp_min(1)
        total = total + loss
        parts[name] = loss.detach()
    return total, parts


# ------------------------------------------------------------------------------------- the frozen model
class AttributeClassifier:
    """The frozen classifier: `predict` images -> one attribute dict per image.

    net: an AttributeNet (eval mode). A prediction holds every head's value; hat_color is None where the
    predicted hat is "none" (as in the renderer's attribute dicts).
    """

    def __init__(self, net: AttributeNet, info: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.info = dict(info or {})

    @property
    def config(self) -> AttributeNetConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: torch.device | str = "cpu") -> AttributeClassifier:
        """Load <world>/attributes/ (config.json + attributes.safetensors), refusing one whose heads are not
        the renderer's vocabularies."""
        from safetensors.torch import load_file

        from models.paths import WeightsError
        from models.weights import load_strict

        folder = Path(folder)
        config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights):
            if not path.is_file():
                raise WeightsError(f"attribute classifier file {path} not found; train it with "
                                   f"`python -m pretrain.world train attributes` (scripts/world.sh)")
        info = json.loads(config_path.read_text())
        if info.get("format") != FORMAT:
            raise WeightsError(f"{config_path} is not an attribute classifier config (format {info.get('format')!r})")
        config = AttributeNetConfig.from_dict(info["config"])
        now = tuple(vocabularies().items())
        if config.heads != now:
            raise WeightsError(f"{folder} was trained on other attribute vocabularies than the renderer's "
                               f"(data_prep.faceworld.attributes); retrain it")
        net = AttributeNet(config)
        load_strict(net, {k: v.float() for k, v in load_file(str(weights)).items()}, weights,
                    "attribute classifier")
        return cls(net.to(device), info)

    def save(self, folder: str | os.PathLike, extra: dict | None = None) -> list[Path]:
        """Write config.json + attributes.safetensors (float16) into `folder`, atomically each."""
        from models.weights import save_state_dict

        folder = Path(folder)
        sd = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in self.net.state_dict().items()}
        weights = save_state_dict(sd, folder / WEIGHTS_FILE)
        info = {"format": FORMAT, "version": 1, "config": as_json_config(self.config), **(extra or {})}
        return [write_json(folder / CONFIG_FILE, info), weights]

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Images (see to_input) -> {head: logits [B, n]} float32 on the classifier's device."""
        chunks = [self.net(to_input(c).to(self.device)) for c in images.split(batch_size)]
        return {name: torch.cat([c[name] for c in chunks]).float() for name in self.config.head_names}

    def predict(self, images: torch.Tensor, batch_size: int = 512, raw: bool = False) -> list[dict[str, str | None]]:
        """Images (see to_input) -> one {head: value} per image; hat_color is None where the predicted hat
        is "none" (as in the renderer's attribute dicts) unless `raw` (every head's own answer)."""
        logits = self.logits(images, batch_size)
        idx = {name: logits[name].argmax(-1).tolist() for name in logits}
        heads = dict(self.config.heads)
        out = []
        for i in range(images.shape[0]):
            pred: dict[str, str | None] = {name: heads[name][idx[name][i]] for name in heads}
            if not raw and pred.get("hat") == "none" and "hat_color" in pred:
                pred["hat_color"] = None
            out.append(pred)
        return out


def attributes_found(predicted: Mapping[str, str | None], wanted: Mapping[str, str]) -> dict[str, bool]:
    """Per attribute a prompt states (data_prep.faceworld.attributes.parse_caption's dict, plus the class
    word under CLASS_WORD if wanted): did the classifier find it? A generic hat (ANY_HAT) is found when
    any hat is predicted."""
    from data_prep.faceworld.attributes import ANY_HAT

    found = {}
    for name, value in wanted.items():
        if name == "hat" and value == ANY_HAT:
            found[name] = predicted.get("hat") not in (None, "none")
        else:
            found[name] = predicted.get(name) == value
    return found


@torch.no_grad()
def attribute_accuracy(classifier: AttributeClassifier, world, identities: np.ndarray, renders: np.ndarray,
                       batch_size: int = 512) -> dict[str, float | None]:
    """{head: accuracy} of `classifier` on the renders (identities[i], renders[i]) of `world` (a
    data_prep.faceworld FaceWorld) with the world's sampled attributes; hat_color over renders with a hat
    (its head's own answer, whatever the hat head says); None for a head no render had."""
    hits: dict[str, int] = {name: 0 for name in classifier.config.head_names}
    counts = dict.fromkeys(hits, 0)
    for lo in range(0, len(identities), batch_size):
        batch = world.render(identities[lo:lo + batch_size], renders[lo:lo + batch_size])
        preds = classifier.predict(batch.images, batch_size, raw=True)
        for pred, word, attrs in zip(preds, batch.class_words, batch.attributes):
            truth = {CLASS_WORD: word, **attrs}
            for name in hits:
                if truth.get(name) is None:
                    continue
                counts[name] += 1
                hits[name] += int(pred[name] == truth[name])
    return {name: hits[name] / counts[name] if counts[name] else None for name in hits}


# ------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class AttributeTrainConfig:
    """Training of the classifier (the tiny one: a few CPU steps for tests)."""

    total_steps: int = 8000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    label_smoothing: float = 0.05
    val_renders: int = 2048  # validation renders (val identities) scored at export, recorded in config.json

    @classmethod
    def tiny(cls) -> AttributeTrainConfig:
        return cls(total_steps=4, batch_size=8, warmup_steps=1, val_renders=16)


class AttributeStage(Stage):
    """Trains AttributeNet on renders of training identities (pretrain.world.common.WorldData); exports
    <world>/attributes/."""

    name = "attributes"

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        tc = self.sized(AttributeTrainConfig(), AttributeTrainConfig.tiny())
        if opts.batch_size is not None:
            tc = dataclasses.replace(tc, batch_size=opts.batch_size)
        if opts.init_from is not None:  # a continued run has learnt most: a short warm-up, a quarter of the rate
            tc = dataclasses.replace(tc, lr=tc.lr / 4, warmup_steps=min(tc.warmup_steps, 20))
        self.train_config = tc
        self.set_steps(tc.total_steps, tc.batch_size, tc.lr, tc.warmup_steps, min_lr_ratio=0.02)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            if opts.init_from is not None:  # continue an exported classifier (its config and weights)
                self.net = AttributeClassifier.from_folder(opts.init_from).net.train().requires_grad_(True)
                self.net_config = self.net.config
            else:
                self.net_config = AttributeNetConfig.tiny() if opts.tiny else AttributeNetConfig.world()
                self.net = AttributeNet(self.net_config)
            self.net = self.net.to(self.device)
        self.data = WorldData(opts.seed, self.name, tc.batch_size, self.device, self.net_config.image_size,
                              every_pair=True)
        self.opt = torch.optim.AdamW(param_groups(self.net, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.99))

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.net}

    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt

    def config(self) -> dict:
        return {"net": as_json_config(self.net_config), "train": as_json_config(self.train_config),
                **({"init_from": str(self.opts.init_from)} if self.opts.init_from is not None else {})}

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float | torch.Tensor]:
        batch = self.data.get(step)
        x = augment(batch.pixels, generator)
        y = targets(batch.renders.class_words, batch.renders.attributes, self.net_config, self.device)
        self.net.train()
        lr = self.set_lr(self.opt, step)
        with self.autocast():
            logits = self.net(x)
        loss, parts = head_loss(logits, y, self.train_config.label_smoothing)
        norm = self.optimize(self.opt, loss, self.net.parameters(), max_norm=5.0)
        return {"loss": loss.detach(), "lr": lr, "grad_norm": norm, **{f"loss_{k}": v for k, v in parts.items()}}

    def export_paths(self, world: Path) -> list[Path]:
        return [world / EXPORT_DIR / CONFIG_FILE, world / EXPORT_DIR / WEIGHTS_FILE]

    def export(self, world: Path) -> list[Path]:
        from data_prep.faceworld.attributes import split_range

        classifier = AttributeClassifier(self.net)
        lo, _ = split_range("val")
        n = self.train_config.val_renders
        ids = lo + np.arange(n) // 2  # two renders of each of n/2 validation identities
        val = attribute_accuracy(classifier, self.data.world, ids, np.arange(n) % 2)
        shown = " ".join(f"{k} {v:.3f}" for k, v in val.items() if v is not None)
        print(f"[{self.name}] validation accuracy: {shown}", flush=True)
        extra = {"trained": {"renderer_seed": self.opts.seed, "steps": self.total_steps, "held_out_pairs": True,
                             **({"init_from": str(self.opts.init_from)} if self.opts.init_from is not None else {}),
                             "train": dataclasses.asdict(self.train_config)},
                 "validation_accuracy": val,
                 "parameters": sum(p.numel() for p in self.net.parameters())}
        return classifier.save(world / EXPORT_DIR, extra)
