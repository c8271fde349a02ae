"""World-CLIP training: contrastive (render, caption) pairs rendered on the fly, exported to <world>/world_clip/.

    python -m pretrain.world train clip --out runs/world --world checkpoints/world --minutes 6

Every step renders a batch of training identities (faceworld, train split) with their captions (the
renderer's grammar, a random subset of attributes named), embeds both (models.world_clip), and
minimises the symmetric InfoNCE loss with a learned temperature. Renders whose captions are the same
text are all positives of each other (a short caption such as "a photo of a man" fits many renders
of a batch). The vocabulary of the word tokenizer is the grammar's (`grammar_vocabulary`).

With `--hard-negatives` each caption also gets a negative: the same statement with one of the attributes it
names changed to another value (NegCLIP's idea), an extra text every image is contrasted with. A batch of
random captions seldom needs an expression or thin glasses to tell its renders apart, so plain InfoNCE can
ignore them (`python -m pretrain.world evaluate --only clip_attributes`); a negative that differs in one
detail cannot be told from its caption without it.

`--init-from <world>/world_clip` continues an exported world-CLIP (its tokenizer and config, a fresh
optimizer, 20 warm-up steps); `--batch-size` replaces the batch of 512 (a CPU run). A new world-CLIP
changes the backbone's prompt features: the backbone is trained again on it.

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
from models.world_clip import WorldCLIPConfig, WorldCLIPModel, load_world_clip, save_world_clip
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
                     same_text: torch.Tensor,
                     negatives: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE with multi-positive targets.

    img, txt: [B, E] embeddings (any norm); same_text: [B, B] bool, True where two captions are equal
    (the diagonal included). negatives: [N, E] further texts the images are contrasted with (hard negatives;
    the text->image direction does not see them); same_text is then [B, B + N], True where image i's caption
    equals text j (a negative can be another render's caption). Returns (loss, image->text top-1 accuracy:
    the best text is a positive).
    """
    b = img.shape[0]
    texts = txt if negatives is None else torch.cat([txt, negatives])
    img, texts = F.normalize(img.float(), dim=-1), F.normalize(texts.float(), dim=-1)
    logits = logit_scale.float().exp().clamp(max=100.0) * img @ texts.T  # [B, B + N]
    targets = same_text.float() / same_text.float().sum(dim=1, keepdim=True)
    square = same_text[:, :b].float()  # symmetric: text j's positives are the images whose caption it is
    loss = 0.5 * (F.cross_entropy(logits, targets)
                  + F.cross_entropy(logits[:, :b].T, square / square.sum(dim=1, keepdim=True)))
    acc = same_text.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
    return loss, acc


def hard_negative(text: str, attrs: dict, class_word: str, rng: np.random.Generator) -> str | None:
    """`text` (a caption of a render with attributes `attrs`) with one attribute it states changed to another
    value, in a new phrasing; None when it states none that can change (a caption naming only the class word).
    A hat taken off loses its colour; a hat put on gets a colour (not stated unless the caption stated one)."""
    from data_prep.faceworld.attributes import ANY_HAT, ATTRIBUTES, caption, parse_caption, with_value

    stated = parse_caption(text)
    names = [n for n in ATTRIBUTES if n in stated and not (n == "hat" and stated[n] == ANY_HAT)]
    if not names:
        return None
    name = names[int(rng.integers(len(names)))]
    others = [v for v in ATTRIBUTES[name] if v != attrs[name]]
    value = others[int(rng.integers(len(others)))]
    colour = None  # a hat put on a bare head: a random colour (drawn only then)
    if name == "hat" and attrs["hat"] == "none":
        colour = ATTRIBUTES["hat_color"][int(rng.integers(len(ATTRIBUTES["hat_color"])))]
    new = with_value(attrs, name, value, colour)
    mention = set(stated) - ({"hat_color"} if name == "hat" and value == "none" else set())
    return caption(new, class_word, rng, mention, generic_hat_p=1.0 if stated.get("hat") == ANY_HAT else 0.0)


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
        self.hard_negatives = opts.hard_negatives
        warmup = 1 if tiny else (20 if opts.init_from is not None else 200)  # a continued run needs little
        self.set_steps(opts.total_steps or (3 if tiny else 4000), opts.batch_size or (8 if tiny else 512),
                       self.base_lr, warmup_steps=warmup)
        torch.manual_seed(opts.seed)
        if opts.init_from is not None:  # a continued run: the exported world-CLIP, its tokenizer and config
            self.tokenizer, model = load_world_clip(opts.init_from, dtype=torch.float32)
            self.model = model.requires_grad_(True).to(self.device).train()
            self.model_config = model.config
        else:
            self.tokenizer = WordTokenizer.build(grammar_vocabulary(500 if tiny else VOCAB_CAPTIONS),
                                                 context_length=24)
            c = WorldCLIPConfig.tiny(len(self.tokenizer)) if tiny else WorldCLIPConfig(vocab_size=len(self.tokenizer))
            self.model_config = c
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
                "total_steps": self.total_steps, **({"hard_negatives": True} if self.hard_negatives else {}),
                **({"init_from": str(self.opts.init_from)} if self.opts.init_from is not None else {})}

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        self.set_lr(self.opt, step)
        batch = self.data.get(step)
        ids = self.tokenizer(batch.captions).to(self.device)
        negatives, neg_texts = None, []
        if self.hard_negatives:
            rng = np.random.default_rng([self.opts.seed, step])
            r = batch.renders
            neg_texts = [t for i, c in enumerate(batch.captions)
                         if (t := hard_negative(c, r.attributes[i], r.class_words[i], rng)) is not None]
        with self.autocast():
            img = self.model.encode_image(batch.pixels)
            txt = self.model.encode_text(ids)
            if neg_texts:
                negatives = self.model.encode_text(self.tokenizer(neg_texts).to(self.device))
        same = caption_groups(batch.captions + neg_texts, self.device)[:len(batch.captions)]
        loss, acc = contrastive_loss(img, txt, self.model.logit_scale, same, negatives)
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
