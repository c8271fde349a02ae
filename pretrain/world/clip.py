"""World-CLIP training: contrastive (render, caption) pairs rendered on the fly, exported to <world>/world_clip/.

    python -m pretrain.world train clip --out runs/world --world checkpoints/world --minutes 6

Every step renders a batch of training identities (faceworld, train split) with their captions (the
renderer's grammar, a random subset of attributes named), embeds both (models.world_clip), and
minimises the symmetric InfoNCE loss with a learned temperature. Renders whose captions are the same
text are all positives of each other (a short caption such as "a photo of a man" fits many renders
of a batch). The vocabulary of the word tokenizer is the grammar's (`grammar_vocabulary`).

Export: the prefix is standardised over STAT_CAPTIONS training captions (models.world_clip
standardize_prefix), then the folder is written in fp16 (models.world_clip.save_world_clip).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from models.tokenizers import WordTokenizer, split_words
from models.world_clip import WorldCLIPConfig, WorldCLIPModel, save_world_clip
from pretrain.world.common import Stage, StageOptions, WorldData, param_groups

VOCAB_CAPTIONS = 20_000  # captions sampled to collect the grammar's words
STAT_CAPTIONS = 8192  # captions the exported prefix is standardised over
EXPORT_DIR = "world_clip"


def grammar_vocabulary(n: int = VOCAB_CAPTIONS, seed: int = 0) -> list[str]:
    """Every word the renderer's caption grammar uses (sorted): the words of n sampled captions naming
    a random subset of attributes and n naming all of them, for every class word."""
    from data_prep.faceworld.attributes import CLASS_WORDS, caption, sample_attributes

    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    attrs = sample_attributes(seed, ids, np.zeros(n, dtype=np.int64), avoid_held_out=False)
    words: set[str] = set()
    for i, a in enumerate(attrs):
        for mention in (None, "all"):
            words.update(split_words(caption(a, CLASS_WORDS[i % len(CLASS_WORDS)], rng, mention)))
    return sorted(words)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                     same_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE with multi-positive targets.

    img, txt: [B, E] embeddings (any norm); same_text: [B, B] bool, True where two captions are equal
    (the diagonal included). Returns (loss, image->text top-1 accuracy: the best text is a positive).
    """
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = logit_scale.float().exp().clamp(max=100.0) * img @ txt.T
    targets = same_text.float() / same_text.float().sum(dim=1, keepdim=True)
    loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    acc = same_text.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
    return loss, acc


def caption_groups(captions: list[str], device: torch.device) -> torch.Tensor:
    """[B, B] bool: captions i and j are the same text."""
    _, inverse = np.unique(np.array(captions, dtype=object).astype(str), return_inverse=True)
    codes = torch.as_tensor(inverse, device=device)
    return rearrange(codes, "b -> b 1") == rearrange(codes, "b -> 1 b")


class ClipStage(Stage):
    """Trains models.world_clip.WorldCLIPModel; exports <world>/world_clip/."""

    name = "clip"
    base_lr = 5e-4
    weight_decay = 0.1

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        tiny = opts.tiny
        self.tokenizer = WordTokenizer.build(grammar_vocabulary(500 if tiny else VOCAB_CAPTIONS),
                                             context_length=24)
        c = WorldCLIPConfig.tiny(len(self.tokenizer)) if tiny else WorldCLIPConfig(vocab_size=len(self.tokenizer))
        self.model_config = c
        self.set_steps(opts.total_steps or (3 if tiny else 4000), 8 if tiny else 512, self.base_lr,
                       warmup_steps=1 if tiny else 200)
        torch.manual_seed(opts.seed)
        self.model = WorldCLIPModel(c).to(self.device).train()
        self.opt = torch.optim.AdamW(param_groups(self.model, self.weight_decay), lr=self.base_lr,
                                     betas=(0.9, 0.98), eps=1e-6)
        self.data = WorldData(opts.seed, self.name, self.batch_size, self.device)

    def modules(self):
        return {"model": self.model}

    def optimizer(self):
        return self.opt

    def config(self) -> dict:
        return {"model": self.model_config.__dict__, "vocab": self.tokenizer.vocab, "batch_size": self.batch_size,
                "total_steps": self.total_steps}

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        self.set_lr(self.opt, step)
        batch = self.data.get(step)
        ids = self.tokenizer(batch.captions).to(self.device)
        with self.autocast():
            img = self.model.encode_image(batch.pixels)
            txt = self.model.encode_text(ids)
        loss, acc = contrastive_loss(img, txt, self.model.logit_scale,
                                     caption_groups(batch.captions, self.device))
        self.optimize(self.opt, loss, self.model.parameters())
        return {"loss": loss.detach(), "acc": acc, "temp": self.model.logit_scale.detach().exp()}

    def export_paths(self, world: Path) -> list[Path]:
        return [world / EXPORT_DIR / "model.safetensors"]

    @torch.no_grad()
    def prefix_stats(self, model: WorldCLIPModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std [text_dim] of the prefix features over every position of STAT_CAPTIONS captions."""
        n = 64 if self.opts.tiny else STAT_CAPTIONS
        captions = self.data.captions(n)
        feats = []
        for chunk in range(0, n, 1024):
            ids = self.tokenizer(captions[chunk:chunk + 1024]).to(self.device)
            feats.append(rearrange(model.text_features(ids).float(), "b l d -> (b l) d"))
        f = torch.cat(feats)
        return f.mean(dim=0), f.std(dim=0)

    def export(self, world: Path) -> list[Path]:
        model = copy.deepcopy(self.model).float().eval()
        model.standardize_prefix(*self.prefix_stats(model))
        folder = save_world_clip(model, self.tokenizer, world / EXPORT_DIR)
        return [folder / "model.safetensors", folder / "config.json", folder / "vocab.json"]
