"""The quality of the identity world itself (issue 15): one JSON, eval/results/world_foundation.json.

    python -m pretrain.world evaluate --world checkpoints/world --seed S --out eval/results/world_foundation.json
        [--device cuda] [--tiny] [--only faces,attributes,text_to_image,frechet,sizes]

`--seed S` is the renderer seed of the test identities (any seed: the world's models were trained
on their own seed's training identities; test identities come from the test range). Sections:

- faces: both recognisers (conditioning: <world>/faces/, evaluation: <world>/eval_faces/) on
  `identities` test identities x `renders` photos each, found by the world's detector
  (pretrain.world.faces: verification TAR at FAR 1e-3, same / different-person similarity
  distributions), and a verifier on colour histograms of the same aligned crops.
- attributes: the attribute classifier's accuracy per attribute on test renders.
- reconstruction: what the world's latent space keeps: the classifier's accuracy on the same test renders
  passed through the pipeline's autoencoder (its posterior mean, decoded), beside its accuracy on the renders
  themselves, the reconstructions' mean absolute error and PSNR, and how much of the person the evaluation
  recogniser finds in them (`identity`: a render against its reconstruction, and a reconstruction against the
  person's other render, beside the two renders' own similarity). The pixel space keeps everything; an
  AutoencoderKL (`train backbone --space autoencoder`) must keep what prompts name and who the person is, or
  no backbone in its latent can draw it.
- text_to_image: the backbone samples text only (models.pipeline.UniDiffuserT2I, "true_uncond"
  guidance) prompts that state exactly one held-out attribute pair of the renderer (HELD_OUT: never
  rendered together for training identities, together covering every attribute), for every class
  word; an image succeeds when the attribute classifier finds all of its prompt's attributes. Rates
  per attribute and overall, at every (steps, guidance) of the grid; the headline at --steps / --guidance,
  also per held-out pair (`success_by_pair`).
- t2i_ceiling: what text_to_image would score for a backbone that drew every held-out pair exactly as the renderer
  does: `ceiling_renders` test renders per held-out pair with the pair set (person, pose and the other attributes
  drawn as usual), scored like text_to_image's images (the pair's values, and the render's own class word), as
  rendered and through the world's latent space (world_latent_space: what a backbone there could draw at best);
  overall and per pair. Below 1 where the attribute classifier cannot read a pair it never saw together (an
  `attributes` stage trained before it rendered every combination, its config's `trained.held_out_pairs`):
  then text_to_image's success measures the classifier as much as the backbone.
- single_attribute: which small details can the backbone draw at all, outside held-out pairs? Prompts
  that state one value of a detail attribute (hat, glasses, expression: every value seen in training
  captions) for every class word, and prompts that state only the class word. Per value, the rate at
  which the classifier finds it when asked and when not asked (the second is the rate a backbone that
  ignores the word would score). Same sampling as text_to_image's headline.
- clip_attributes: can the world's image-text model (the one CLIP-I and CLIP-T use, through
  models.image_text) tell each attribute's values apart? For each of `clip_renders` test renders and each
  attribute, one caption per value of that attribute, the render's other attributes stated as they are
  (same phrasing); the render is right when its own value's caption is the nearest to its image. Accuracy
  per attribute, beside chance (one over the values). An attribute near chance is one CLIP-T cannot reward
  an edit of, and one the CLIP-image channel does not carry. `clip_text_cosine`: the mean cosine between the
  text embeddings of those captions (near 1: the text side does not hear the attribute either).
  `clip_image_probe`: a linear classifier fitted on the image embeddings of half of the renders, its
  accuracy on the other half, beside the majority value's share (at that share: the embedding does not
  carry the attribute at all, whatever text it is compared with).
- backbone_attributes: has the backbone learnt what each attribute's words mean? The backbone as a zero-shot
  classifier (the Diffusion Classifier idea): for each of `classify_renders` test renders and each attribute,
  the captions of clip_attributes (one per value, the rest stated as they are) condition the backbone's
  noise prediction on the same noisy render (one noise draw per render and timestep, shared by the captions);
  the caption with the smallest image-noise error is the backbone's answer. Accuracy per attribute at each of
  CLASSIFY_TIMESTEPS and with the errors summed over them, beside chance. An attribute the backbone draws when
  asked is one it reads here; one at chance here is one whose words it never tied to the pixels, however well
  it could draw it (single_attribute's "unasked" rates say whether it draws the value at all). The same
  errors restricted to the render's face box (the latent cells whose centres it holds: encoder.objective's
  box_mask) give a second answer (`backbone_attribute_accuracy_face_box`).
  `backbone_text_distance`: how far apart those captions are in the text features the backbone reads
  (pooled over tokens; the mean pairwise distance over the mean norm): near 0, the backbone cannot hear the
  attribute whatever it learnt.
- attribute_energy: how much of what the backbone learns to denoise each attribute is. For each of
  `energy_renders` test renders and each attribute, the render again with only that attribute changed (every
  other value of it in turn; same person, pose and light), through the pipeline's autoencoder: the mean
  squared change of the latent, as a share of the mean squared difference between two random test renders
  (twice the latent's variance across renders; `latent_share`), the same in pixels (`pixel_share`), and the
  share of pixels visibly changed; and the latent share under the backbone stage's `--face-weight W` for W in
  ENERGY_FACE_WEIGHTS (`latent_share_face_weight`: both the change and the random pair weighed by that stage's
  map, pretrain.world.common.face_weight_map), and under other band gains of the pixel space than the world's
  (`--energy-level-gains G1,G2,..`, repeatable: `latent_share_level_gains`), what a backbone trained on them
  would see. The denoising loss rewards
  learning an attribute's words in proportion to the latent energy they decide: an attribute with a small
  share is one a backbone learns last (compare backbone_attributes).
- frechet: Frechet distance between world-CLIP image features of generated images (the captions of
  test renders as prompts) and of those renders, for steps 10/20/30 x guidance 1/3/7 (with --headline-only at
  --steps and --guidance alone), beside the distance between two disjoint sets of real renders (the floor).
- text_dependence: does the backbone take the image from its prompt? At the noisiest training
  timesteps, the R^2 of the predicted clean image's mean colour against the render's, given the
  render's own caption, another render's caption (shuffled), and the own caption with pure noise as the
  noisy image (where sampling starts). A backbone that follows its prompts scores far higher with the
  own caption than shuffled; one that reads the colours off the noise scores the same. Minutes on the CPU.
- captions: what training captions reach the text tower with (`captions`): the share of the seed's training
  captions longer than the world-CLIP's context, and per attribute how often a statement is lost with the cut.
- sizes: every file under the world folder (and --demo folders), in MB, and the total, which counts files
  with the same bytes once, as git stores them (`copies`).

`--include JSON` adds the sections of an earlier run of this command (e.g. text_to_image and frechet, made
on a GPU) to this one's JSON, so that one file holds every figure of the world: only when that run measured
the same backbone files (its `world_sha256`: models.paths.WORLD_BACKBONE_FILES, the weights and
model_configs.json, whose sampler policy is also recorded as `sampler`) at the same renderer seed, and only
sections this run does not measure itself (SECTION_KEYS: the keys each section writes; a section both measured
is this run's). Its command, commit and device are kept beside them (`included`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import number
from models.paths import world_backbone_sha256
from models.pixels import to_signed
from models.provenance import git_provenance

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("faces", "attributes", "reconstruction", "text_to_image", "t2i_ceiling", "single_attribute",
            "clip_attributes", "backbone_attributes", "attribute_energy", "frechet", "text_dependence", "captions",
            "sizes")
# the result keys each section writes: what --include takes of an earlier JSON's sections (evaluate_world checks
# every run's sections against it, so a key added to a section without naming it here fails at once)
SECTION_KEYS = {
    "faces": ("tar_at_far_1e-3", "colour_histogram_tar_at_far_1e-3", "verification", "test_photos"),
    "attributes": ("attribute_accuracy", "attribute_renders"),
    "reconstruction": ("reconstruction", "reconstruction_attribute_accuracy"),
    "text_to_image": ("text_to_image", "text_to_image_attribute_success"),
    "t2i_ceiling": ("text_to_image_ceiling",),
    "single_attribute": ("single_attribute", "single_attribute_success", "single_attribute_unasked"),
    "clip_attributes": ("clip_attributes", "clip_attribute_accuracy", "clip_text_cosine", "clip_image_probe"),
    "backbone_attributes": ("backbone_attributes", "backbone_attribute_accuracy",
                            "backbone_attribute_accuracy_by_timestep", "backbone_attribute_accuracy_face_box",
                            "backbone_text_distance"),
    "attribute_energy": ("attribute_energy", "attribute_energy_setup"),
    "frechet": ("frechet", "frechet_world_clip", "frechet_world_clip_real_vs_real"),
    "text_dependence": ("text_dependence",),
    "captions": ("captions",),
    "sizes": ("demo_parts_mb",),
}
DETAILS = ("hat", "glasses", "expression")  # the attributes single_attribute asks for one value at a time
DEPENDENCE_TIMESTEPS = (800, 900, 950, 1000)
CLASSIFY_TIMESTEPS = (300, 500, 700, 900)  # network timesteps (of 1000) of backbone_attributes
ENERGY_FACE_WEIGHTS = (4.0, 16.0)  # the backbone's --face-weight values attribute_energy also weighs with
FAR = 1e-3
STEPS_GRID = (10, 20, 30)
GUIDANCE_GRID = (1.0, 3.0, 7.0)


@dataclass(frozen=True)
class EvalConfig:
    """How much is measured. identities x renders: face verification; attribute_renders: classifier
    accuracy; t2i_images: images per (held-out pair, class word); ceiling_renders: test renders per held-out pair
    of t2i_ceiling; clip_renders: renders of clip_attributes; classify_renders: renders of backbone_attributes;
    energy_renders: renders of attribute_energy; energy_level_gains: other pixel-space band gains attribute_energy
    also measures under;
    frechet_images: generated (and real) images per grid point; steps / guidance: the headline sampling
    setting of text_to_image; t2i_grid: text_to_image also at every grid point (not only the headline setting);
    frechet_grid: frechet at every grid point (else at the headline setting only); captions: training captions
    the captions section reads."""

    identities: int = 1000
    renders: int = 5
    attribute_renders: int = 4000
    t2i_images: int = 8
    ceiling_renders: int = 256
    frechet_images: int = 1000
    steps: int = 30
    guidance: float = 7.0
    t2i_grid: bool = True
    frechet_grid: bool = True
    batch: int = 512
    dependence_renders: int = 256
    clip_renders: int = 1000
    classify_renders: int = 120
    energy_renders: int = 300
    energy_level_gains: tuple[tuple[float, ...], ...] = ()
    captions: int = 20_000

    @classmethod
    def tiny(cls) -> EvalConfig:
        return cls(identities=6, renders=3, attribute_renders=16, t2i_images=1, ceiling_renders=2, frechet_images=8,
                   t2i_grid=False, batch=64, dependence_renders=8, clip_renders=6, classify_renders=3,
                   energy_renders=8, captions=64)


# -------------------------------------------------------------------------------------------- Frechet
def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to features a [N, D] and b [M, D]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). When the product's square root is not finite
    (near-singular covariances) eps is added to both diagonals."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N >= 2, D] of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(s_a @ s_b)
    if not np.all(np.isfinite(root)):
        offset = eps * np.eye(len(s_a))
        root = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    root = np.real(root)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(root))


# ------------------------------------------------------------------------------------------- prompts
def held_out_prompts(seed: int) -> list[dict]:
    """One prompt per (held-out pair, class word), in the renderer's grammar, stating exactly the pair:
    [{"prompt", "class_word", "pair": [[name, value], [name, value]], "wanted": {name: value}}]."""
    from data_prep.faceworld.attributes import CLASS_WORDS, HELD_OUT

    out = []
    for p, pair in enumerate(HELD_OUT):
        attrs = dict(pair)
        for w, word in enumerate(CLASS_WORDS):
            text = _stating(attrs, word, np.random.default_rng([seed, p, w]))
            out.append({"prompt": text, "class_word": word, "pair": [list(kv) for kv in pair], "wanted": attrs})
    return out


def single_attribute_prompts(seed: int) -> list[dict]:
    """One prompt per (value of a DETAILS attribute other than none, class word) stating that value alone,
    then one per class word stating nothing else: [{"prompt", "class_word", "wanted": {name: value} or {}}]."""
    from data_prep.faceworld.attributes import ATTRIBUTES, CLASS_WORDS

    asks = [{name: value} for name in DETAILS for value in ATTRIBUTES[name] if value not in ("none", "neutral")]
    out = []
    for a, attrs in enumerate([*asks, {}]):
        for w, word in enumerate(CLASS_WORDS):
            text = _stating(attrs, word, np.random.default_rng([seed, 1000 + a, w]))
            out.append({"prompt": text, "class_word": word, "wanted": attrs})
    return out


def _stating(attrs: dict[str, str], word: str, rng: np.random.Generator) -> str:
    """A caption of the renderer's grammar with `word` that states exactly `attrs` (not a generic "hat")."""
    from data_prep.faceworld.attributes import caption, parse_caption

    for _ in range(100):
        text = caption(attrs, word, rng, mention=set(attrs))
        if parse_caption(text) == attrs:
            return text
    raise RuntimeError(f"the grammar gave no caption stating exactly {attrs}")


# ---------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(pipe, prompts: Sequence[str], *, steps: int, guidance: float, seed: int, batch: int) -> torch.Tensor:
    """Text-only samples of the backbone, one per prompt: float32 [N, 3, H, W] in [0, 1] on the CPU.
    A CPU generator seeded with `seed` draws every random number, batch after batch."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for lo in range(0, len(prompts), batch):
        chunk = list(prompts[lo:lo + batch])
        text = pipe.encode_text(chunk)
        eps_fn = pipe.eps_fn(text, scale=guidance, mode="true_uncond", generator=generator)
        z, _ = pipe.sample_latents(eps_fn, len(chunk), steps=steps, generator=generator)
        images.append(pipe.decode(z).float().cpu())
    return torch.cat(images)


def _grid_key(steps: int, guidance: float) -> tuple[str, str]:
    return str(steps), f"{guidance:g}"


# ------------------------------------------------------------------------------------------ sections
def evaluate_faces(world_dir: Path, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """tar_at_far_1e-3 {conditioning, evaluation}, the colour-histogram verifier's TAR, full reports."""
    from pretrain.world.faces import evaluate_recogniser, load_world_analyzer, render_test_photos

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
    photos, labels, landmarks = render_test_photos(seed, cfg.identities, cfg.renders)
    reports = {}
    for name in ("conditioning", "evaluation"):
        analyzer = load_world_analyzer(world_dir, name, providers=providers)
        try:
            reports[name] = evaluate_recogniser(analyzer, photos, labels, landmarks, far=FAR)
        except ValueError as e:  # no face found in any photo (an untrained detector): nothing verifies
            print(f"[evaluate] {name} recogniser: {e}; its TAR is 0", flush=True)
            failed = {"tar": 0.0, "error": str(e)}
            reports[name] = {"recogniser": failed, "colour_histogram": failed, "detected": 0.0}
    return {"tar_at_far_1e-3": {k: r["recogniser"]["tar"] for k, r in reports.items()},
            "colour_histogram_tar_at_far_1e-3": reports["conditioning"]["colour_histogram"]["tar"],
            "verification": reports,
            "test_photos": {"identities": cfg.identities, "renders_each": cfg.renders, "split": "test"}}


def evaluate_attributes(world_dir: Path, seed: int, cfg: EvalConfig, device: torch.device, classifier) -> dict:
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld
    from pretrain.world.attributes import attribute_accuracy

    lo, _ = split_range("test")
    n = cfg.attribute_renders
    ids = lo + np.arange(n, dtype=np.int64) // 2  # two renders of each of n/2 test identities
    acc = attribute_accuracy(classifier, FaceWorld(seed, 64, device, chunk=cfg.batch), ids,
                             np.arange(n, dtype=np.int64) % 2, cfg.batch)
    return {"attribute_accuracy": acc, "attribute_renders": n}


class _ThroughLatent:
    """A FaceWorld whose renders come back through an autoencoder (the posterior mean, decoded),
    keeping the sums of the reconstructions' absolute and squared errors (pixels in [0, 1]) and the first
    `keep` renders, reconstructions and landmarks (uint8 [N, H, W, 3], [N, 5, 2])."""

    def __init__(self, world, autoencoder, keep: int = 0):
        self.world, self.autoencoder, self.keep = world, autoencoder, keep
        self.abs_err = self.sq_err = 0.0
        self.values = 0
        self.kept: dict[str, list] = {"renders": [], "reconstructions": [], "landmarks": []}

    @torch.no_grad()
    def render(self, identities, renders, attributes=None):
        batch = self.world.render(identities, renders, attributes)
        x = to_signed(batch.images)
        ae = self.autoencoder
        param = next(ae.parameters(), None)
        dtype = torch.float32 if param is None else param.dtype
        y = ae.decode(ae.latent(x.to(dtype))).float().clamp(-1.0, 1.0)  # the posterior mean, decoded
        err = (y - x) / 2.0
        self.abs_err += float(err.abs().sum())
        self.sq_err += float(err.pow(2).sum())
        self.values += err.numel()
        images = ((y + 1.0) * 127.5).round().to(torch.uint8).movedim(-3, -1)
        room = self.keep - sum(len(x) for x in self.kept["renders"])
        if room > 0:
            self.kept["renders"].append(batch.images[:room].cpu())
            self.kept["reconstructions"].append(images[:room].cpu())
            self.kept["landmarks"].append(torch.from_numpy(batch.landmarks[:room]))
        return dataclasses.replace(batch, images=images)


def identity_kept(world_dir: Path, renders: torch.Tensor, reconstructions: torch.Tensor,
                  landmarks: torch.Tensor) -> dict:
    """The evaluation recogniser (<world>/eval_faces/) on aligned crops (the renders' true landmarks) of renders
    that come in pairs of one person (items 2i, 2i + 1) and of their reconstructions: the mean cosine of a
    render and its reconstruction, of the two renders of a person, and of one's reconstruction and the other
    render (what a recogniser finds of the person in a generated image, against the renders' own)."""
    from pretrain.world.faces import aligned_crops, load_world_analyzer

    analyzer = load_world_analyzer(world_dir, "evaluation")

    def embed(images: torch.Tensor) -> torch.Tensor:
        crops = aligned_crops(images.permute(0, 3, 1, 2).float(), landmarks.float())
        crops = crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return torch.from_numpy(np.concatenate([analyzer.embed_aligned(list(crops[i:i + 256]))
                                                for i in range(0, len(crops), 256)]))

    a, b = embed(renders), embed(reconstructions)
    n = len(a) // 2 * 2
    return {"render_and_reconstruction": float((a * b).sum(-1).mean()),
            "two_renders_of_a_person": float((a[0:n:2] * a[1:n:2]).sum(-1).mean()),
            "reconstruction_and_other_render": float(((b[0:n:2] * a[1:n:2]).sum(-1).mean()
                                                      + (b[1:n:2] * a[0:n:2]).sum(-1).mean()) / 2),
            "renders": len(a), "recogniser": "evaluation (eval_faces/)"}


def world_latent_space(world_dir: Path, device: torch.device) -> tuple[object, str]:
    """(autoencoder, where): the autoencoder stage's export (<world>/autoencoder/, the one a backbone would be
    trained in) when the world has one, else the latent space the world's pipeline samples through."""
    from models.autoencoder import load_autoencoder
    from models.paths import find_weights, read_model_configs
    from pretrain.world.autoencoder import CONFIG_FILE, EXPORT_DIR, load_world_autoencoder

    if (world_dir / EXPORT_DIR / CONFIG_FILE).is_file():
        return load_world_autoencoder(world_dir, device), str(world_dir / EXPORT_DIR)
    path = find_weights("autoencoder", root=world_dir)
    return load_autoencoder(path, read_model_configs(world_dir).get("autoencoder"), device=device), str(path)


def evaluate_reconstruction(autoencoder, where: str, classifier, seed: int, cfg: EvalConfig,
                            device: torch.device, world_dir: Path | None = None) -> dict:
    """What a latent space keeps: the attribute classifier on test renders and on the same renders through
    the autoencoder (encode's mean, decode), the reconstructions' mean absolute error and PSNR (pixels in
    [0, 1]), and with world_dir the identity the evaluation recogniser finds in the first cfg.identities
    reconstructions (identity_kept). The pixel space keeps everything; an AutoencoderKL must keep what prompts
    name and who the person is."""
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld
    from pretrain.world.attributes import attribute_accuracy

    lo, _ = split_range("test")
    n = cfg.attribute_renders
    ids, rs = lo + np.arange(n, dtype=np.int64) // 2, np.arange(n, dtype=np.int64) % 2  # as evaluate_attributes
    world = FaceWorld(seed, 64, device, chunk=cfg.batch)
    through = _ThroughLatent(world, autoencoder, keep=min(n, cfg.identities) if world_dir is not None else 0)
    acc_through = attribute_accuracy(classifier, through, ids, rs, cfg.batch)
    mse = through.sq_err / max(through.values, 1)
    identity = None
    if through.keep:
        identity = identity_kept(world_dir, *(torch.cat(v) for v in through.kept.values()))
    return {"reconstruction_attribute_accuracy": acc_through,
            "reconstruction": {"renders": n, "render_index": [0, 1],
                               "attribute_accuracy_of_renders": attribute_accuracy(classifier, world, ids, rs,
                                                                                   cfg.batch),
                               "mean_abs_error": through.abs_err / max(through.values, 1),
                               "psnr_db": None if not mse else float(10 * np.log10(1.0 / mse)),
                               "autoencoder": type(autoencoder).__name__, "from": where,
                               "identity": identity}}


def _success(classifier, images: torch.Tensor, items: list[dict]) -> dict:
    """Per-attribute and overall rates of prompts' attributes found in their images."""
    from pretrain.world.attributes import CLASS_WORD, attributes_found

    preds = classifier.predict(images)
    hits: dict[str, list[bool]] = {}
    overall, with_word = [], []
    for pred, item in zip(preds, items):
        found = attributes_found(pred, item["wanted"])
        word = attributes_found(pred, {CLASS_WORD: item["class_word"]})[CLASS_WORD]
        for name, ok in {**found, CLASS_WORD: word}.items():
            hits.setdefault(name, []).append(ok)
        overall.append(all(found.values()))
        with_word.append(all(found.values()) and word)
    rates = {name: float(np.mean(v)) for name, v in hits.items()}
    return {**rates, "overall": float(np.mean(overall)), "overall_with_class_word": float(np.mean(with_word))}


def evaluate_text_to_image(pipe, classifier, seed: int, cfg: EvalConfig) -> dict:
    """Held-out-pair prompts sampled at the headline setting (and every grid point with cfg.t2i_grid):
    success rates at each, and at the headline per held-out pair (`success_by_pair`)."""
    items = [it for it in held_out_prompts(seed) for _ in range(cfg.t2i_images)]
    prompts = [it["prompt"] for it in items]
    grid: dict[str, dict[str, dict]] = {}
    settings = [(s, g) for s in STEPS_GRID for g in GUIDANCE_GRID] if cfg.t2i_grid else []
    if (cfg.steps, cfg.guidance) not in settings:
        settings.append((cfg.steps, cfg.guidance))
    for steps, guidance in settings:
        images = generate(pipe, prompts, steps=steps, guidance=guidance, seed=seed, batch=cfg.batch)
        s, g = _grid_key(steps, guidance)
        grid.setdefault(s, {})[g] = _success(classifier, images, items)
        if (steps, guidance) == (cfg.steps, cfg.guidance):
            headline = images
    s, g = _grid_key(cfg.steps, cfg.guidance)
    rows: dict[str, list[int]] = {}  # each held-out pair's items (its prompts, each cfg.t2i_images times in a row)
    for i, it in enumerate(items):
        rows.setdefault(_pair_key(it["pair"]), []).append(i)
    per_pair = {key: [items[i]["prompt"] for i in idx[::cfg.t2i_images]] for key, idx in rows.items()}
    by_pair = {key: _success(classifier, headline[idx], [items[i] for i in idx]) for key, idx in rows.items()}
    return {"text_to_image_attribute_success": grid[s][g],
            "text_to_image": {"steps": cfg.steps, "guidance": cfg.guidance, "images_per_prompt": cfg.t2i_images,
                              "prompts": per_pair, "combinations": len(per_pair), "success_grid": grid,
                              "success_by_pair": by_pair}}


def _pair_key(pair) -> str:
    """A held-out pair as text_to_image's success_by_pair names it: "name=value + name=value"."""
    return " + ".join(f"{n}={v}" for n, v in pair)


def evaluate_t2i_ceiling(autoencoder, where: str, classifier, seed: int, cfg: EvalConfig,
                         device: torch.device) -> dict:
    """Test renders with each held-out pair set, scored like text_to_image's images, as rendered and through the
    latent space (see the module docstring)."""
    from data_prep.faceworld.attributes import HELD_OUT, split_range
    from data_prep.faceworld.render import FaceWorld

    lo, _ = split_range("test")
    n = cfg.ceiling_renders
    # each batch rendered once: the reconstructions come back, the renders are kept beside them
    through = _ThroughLatent(FaceWorld(seed, 64, device, chunk=cfg.batch), autoencoder, keep=n * len(HELD_OUT))
    reconstructions: list[torch.Tensor] = []
    items: list[dict] = []
    for p, pair in enumerate(HELD_OUT):
        ids = lo + p * n + np.arange(n, dtype=np.int64)  # other people for each pair
        wanted = dict(pair)
        for at in range(0, n, cfg.batch):
            batch = through.render(ids[at:at + cfg.batch], 0, wanted)
            reconstructions.append(batch.images.cpu())
            items += [{"wanted": wanted, "class_word": w} for w in batch.class_words]
    out: dict = {"renders_per_pair": n, "latent_space": where, "by_pair": {}}
    for kind, chunks in (("renders", through.kept["renders"]), ("reconstructions", reconstructions)):
        x = torch.cat(chunks)
        out[kind] = _success(classifier, x, items)
        for p, pair in enumerate(HELD_OUT):
            rows = slice(p * n, (p + 1) * n)
            out["by_pair"].setdefault(_pair_key(pair), {})[kind] = _success(classifier, x[rows], items[rows])["overall"]
    return {"text_to_image_ceiling": out}


def evaluate_single_attribute(pipe, classifier, seed: int, cfg: EvalConfig) -> dict:
    """single_attribute_prompts at the headline setting: per "name=value", the rate at which the classifier finds
    the value in images whose prompt asks for it, and in images whose prompt states only the class word."""
    items = [it for it in single_attribute_prompts(seed) for _ in range(cfg.t2i_images)]
    images = generate(pipe, [it["prompt"] for it in items], steps=cfg.steps, guidance=cfg.guidance, seed=seed,
                      batch=cfg.batch)
    from pretrain.world.attributes import attributes_found

    preds = classifier.predict(images)
    asked: dict[tuple[str, str], list[bool]] = {}
    for pred, item in zip(preds, items):
        for name, ok in attributes_found(pred, item["wanted"]).items():
            asked.setdefault((name, item["wanted"][name]), []).append(ok)
    plain = [pred for pred, item in zip(preds, items) if not item["wanted"]]
    unasked = {(n, v): [attributes_found(p, {n: v})[n] for p in plain] for n, v in asked}
    return {"single_attribute_success": {f"{n}={v}": float(np.mean(hits)) for (n, v), hits in asked.items()},
            "single_attribute_unasked": {f"{n}={v}": float(np.mean(hits)) for (n, v), hits in unasked.items()},
            "single_attribute": {"steps": cfg.steps, "guidance": cfg.guidance, "images_per_prompt": cfg.t2i_images,
                                 "prompts": sorted({it["prompt"] for it in items})}}


def attribute_variants(attrs: dict[str, str | None], name: str) -> list[dict[str, str | None]]:
    """attrs with `name` set to each of its values in turn (ATTRIBUTES order), under the hat rule of
    data_prep.faceworld.attributes.with_value (a hat put on a bare head takes the first hat colour)."""
    from data_prep.faceworld.attributes import ATTRIBUTES, with_value

    return [with_value(attrs, name, value) for value in ATTRIBUTES[name]]


def variant_captions(attrs: dict[str, str | None], word: str, key: Sequence[int]) -> tuple[list[str], list[str]]:
    """(names, captions): for each attribute the render has (hat colour only under a hat), in ATTRIBUTES order,
    one caption per value (attribute_variants), every other attribute stated as it is; each caption is phrased
    from a fresh rng seeded with `key`, so that the captions differ only in the attribute's words."""
    from data_prep.faceworld.attributes import ATTRIBUTES, caption

    names = [n for n in ATTRIBUTES if not (n == "hat_color" and attrs["hat"] == "none")]
    captions = [caption(v, word, np.random.default_rng(key), "all", generic_hat_p=0.0)
                for name in names for v in attribute_variants(attrs, name)]
    return names, captions


def linear_probe(x: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 500) -> dict[str, float]:
    """Multinomial logistic regression (standardised features, a small L2 penalty, Adam from zeros: deterministic)
    fitted on the first half of (x [N, D], labels [N]) and scored on the second half:
    {"accuracy", "majority": the most frequent label's share of the second half}."""
    import torch.nn.functional as F

    half = len(labels) // 2
    x = (x - x[:half].mean(dim=0)) / x[:half].std(dim=0).clamp_min(1e-6)
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(x[:half] @ weight + bias, labels[:half]) + 1e-3 * weight.pow(2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = ((x[half:] @ weight + bias).argmax(dim=1) == labels[half:]).float().mean()
    majority = torch.bincount(labels[half:], minlength=classes).max() / max(len(labels) - half, 1)
    return {"accuracy": float(accuracy), "majority": float(majority)}


@torch.no_grad()
def evaluate_clip_attributes(clip, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """Zero-shot attribute accuracy of the image-text model on test renders (see the module docstring)."""
    import torch.nn.functional as F

    from data_prep.faceworld.attributes import ATTRIBUTES, split_range
    from data_prep.faceworld.render import FaceWorld

    lo, _ = split_range("test")
    n = cfg.clip_renders
    renders = FaceWorld(seed, 64, device, chunk=cfg.batch).render(lo + np.arange(n, dtype=np.int64), 1)
    images = F.normalize(torch.from_numpy(_clip_features(clip, renders.images, cfg.batch)), dim=-1)
    hits: dict[str, list[bool]] = {name: [] for name in ATTRIBUTES}
    cosines: dict[str, list[float]] = {name: [] for name in ATTRIBUTES}
    for i, attrs in enumerate(renders.attributes):
        names, captions = variant_captions(attrs, renders.class_words[i], [seed, i])
        embedded = F.normalize(clip.embed_texts(captions).double().cpu(), dim=-1)  # one call per render
        for name, texts in zip(names, embedded.split([len(ATTRIBUTES[n]) for n in names]), strict=True):
            values, k = ATTRIBUTES[name], len(texts)
            hits[name].append(values[int((texts @ images[i]).argmax())] == attrs[name])
            cosines[name].append(float(((texts @ texts.T).sum() - k) / (k * k - k)))
    probe = {}
    for name, values in ATTRIBUTES.items():
        rows = [i for i, attrs in enumerate(renders.attributes) if attrs[name] is not None]
        labels = torch.tensor([values.index(renders.attributes[i][name]) for i in rows])
        probe[name] = linear_probe(images[rows].float(), labels, len(values))
    return {"clip_attribute_accuracy": {name: float(np.mean(h)) for name, h in hits.items()},
            "clip_text_cosine": {name: float(np.mean(c)) for name, c in cosines.items()},
            "clip_image_probe": probe,
            "clip_attributes": {"renders": n, "render_index": 1,
                                "chance": {k: 1 / len(v) for k, v in ATTRIBUTES.items()},
                                "renders_per_attribute": {name: len(h) for name, h in hits.items()}}}


def evaluate_frechet(pipe, clip, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """Frechet distance in world-CLIP image features: generated (captions of test renders) vs those renders."""
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld

    world = FaceWorld(seed, 64, device, chunk=cfg.batch)
    lo, hi = split_range("test")
    n = cfg.frechet_images
    # real set: one render each of n test identities from the far end of the test range (other than the
    # faces' and attributes' identities); a second, disjoint set gives the real-vs-real floor
    ids = hi - 1 - np.arange(2 * n, dtype=np.int64)
    real, captions = [], []
    for lo_ in range(0, 2 * n, cfg.batch):
        batch = world.render(ids[lo_:lo_ + cfg.batch], 0)
        real.append(_clip_features(clip, batch.images))
        captions += batch.captions
    real_features = np.concatenate(real)
    ref, other = real_features[:n], real_features[n:]
    out: dict[str, dict[str, float]] = {}
    grid = [(s, g) for s in STEPS_GRID for g in GUIDANCE_GRID] if cfg.frechet_grid else [(cfg.steps, cfg.guidance)]
    for steps, guidance in grid:
        images = generate(pipe, captions[:n], steps=steps, guidance=guidance, seed=seed + 1, batch=cfg.batch)
        s, g = _grid_key(steps, guidance)
        out.setdefault(s, {})[g] = frechet_distance(_clip_features(clip, images), ref)
    return {"frechet_world_clip": out, "frechet_world_clip_real_vs_real": frechet_distance(other, ref),
            "frechet": {"images": n, "features": "world-CLIP image embedding", "by": "steps, then guidance"}}


@torch.no_grad()
def predict_clean(pipe, z: torch.Tensor, clip_n: torch.Tensor, text: torch.Tensor,
                  t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One prediction of the pipeline's UViT at network timestep t (clean text, data_type 1) on the noisy
    latent z [B, C, h, w]: (predicted noise, clean latent (z - sigma_t eps) / alpha_t), both float32."""
    n = len(z)
    ab = float(pipe.schedule.alphas_cumprod[t])
    with pipe.execution.autocast():
        pred, _, _ = pipe.uvit(z.to(pipe.dtype), clip_n.to(pipe.dtype), text.to(pipe.dtype),
                               torch.full((n,), float(t), device=z.device), torch.zeros(n, device=z.device),
                               torch.ones(n, dtype=torch.long, device=z.device))
    pred = pred.float()
    return pred, (z - (1 - ab) ** 0.5 * pred) / ab ** 0.5


@torch.no_grad()
def evaluate_backbone_attributes(world_dir: Path, pipe, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """The backbone as a zero-shot attribute classifier of test renders (see the module docstring)."""
    from data_prep.faceworld.attributes import ATTRIBUTES, split_range
    from data_prep.faceworld.render import FaceWorld
    from encoder.objective import box_mask
    from models.world_clip import load_world_clip

    n, steps = cfg.classify_renders, CLASSIFY_TIMESTEPS
    lo, _ = split_range("test")
    renders = FaceWorld(seed, pipe.image_size, device, chunk=cfg.batch).render(lo + np.arange(n, dtype=np.int64), 1)
    pixels = to_signed(renders.images).to(device)
    tokenizer, clip = load_world_clip(world_dir / "world_clip", device=device, dtype=torch.float32)
    z0 = pipe.autoencoder.encode(pixels.to(pipe.dtype)).float()
    clip0 = clip.encode_image(pixels).float()[:, None]
    scale = z0.shape[-1] / pipe.image_size  # face boxes: pixels -> latent cells
    g = torch.Generator(device="cpu").manual_seed(seed)
    hits: dict = {t: {name: [] for name in ATTRIBUTES} for t in (*steps, "summed", "face_box")}
    distance: dict[str, list[float]] = {name: [] for name in ATTRIBUTES}
    t0 = time.perf_counter()
    for i, attrs in enumerate(renders.attributes):
        names, captions = variant_captions(attrs, renders.class_words[i], [seed, i])
        text = clip.text_features(tokenizer(captions).to(device)).float()
        box = torch.as_tensor(renders.boxes[i:i + 1] * scale, device=device)
        face = box_mask(box, *z0.shape[-2:])[0, 0].float()  # [h, w]: the latent cells whose centres it holds
        errors = torch.zeros(len(captions), len(steps), 2)  # whole latent, face box
        for j, t in enumerate(steps):  # one noise draw per (render, timestep), shared by its captions
            eps_z = torch.randn((1, *z0.shape[1:]), generator=g).to(device)
            eps_c = torch.randn((1, *clip0.shape[1:]), generator=g).to(device)
            z_n = pipe.schedule.add_noise(z0[i:i + 1], eps_z, t).expand(len(captions), -1, -1, -1)
            clip_n = pipe.schedule.add_noise(clip0[i:i + 1], eps_c, t).expand(len(captions), -1, -1)
            pred, _ = predict_clean(pipe, z_n, clip_n, text, t)
            sq = (pred - eps_z).pow(2).mean(dim=1)  # [k, h, w]
            errors[:, j, 0] = sq.mean(dim=(1, 2)).cpu()
            errors[:, j, 1] = ((sq * face).sum(dim=(1, 2)) / face.sum().clamp_min(1.0)).cpu()
        pooled = text.mean(dim=1).cpu()  # the backbone's text input, pooled over tokens
        sizes = [len(ATTRIBUTES[m]) for m in names]
        for name, err, feats in zip(names, errors.split(sizes), pooled.split(sizes), strict=True):
            truth, k = ATTRIBUTES[name].index(attrs[name]), len(feats)
            for j, t in enumerate(steps):
                hits[t][name].append(int(err[:, j, 0].argmin()) == truth)
            hits["summed"][name].append(int(err[:, :, 0].sum(dim=1).argmin()) == truth)
            hits["face_box"][name].append(int(err[:, :, 1].sum(dim=1).argmin()) == truth)
            pair = torch.cdist(feats, feats).sum() / (k * k - k)
            distance[name].append(float(pair / feats.norm(dim=-1).mean().clamp_min(1e-12)))
        if (i + 1) % max(n // 10, 1) == 0 or i + 1 == n:
            print(f"[evaluate] backbone_attributes {i + 1}/{n} renders, {time.perf_counter() - t0:.0f} s", flush=True)

    def rates(h: dict[str, list]) -> dict[str, float]:
        return {name: float(np.mean(v)) for name, v in h.items() if v}

    return {"backbone_attribute_accuracy": rates(hits["summed"]),
            "backbone_attribute_accuracy_by_timestep": {str(t): rates(hits[t]) for t in steps},
            "backbone_attribute_accuracy_face_box": rates(hits["face_box"]),
            "backbone_text_distance": rates(distance),
            "backbone_attributes": {
                "renders": n, "render_index": 1, "timesteps": list(steps),
                "chance": {k: 1 / len(v) for k, v in ATTRIBUTES.items()},
                "renders_per_attribute": {name: len(h) for name, h in hits["summed"].items()},
                "measure": "the caption (one per value) with the smallest image-noise error is the answer; "
                           "by timestep, and with the errors summed over the timesteps (over the whole latent, "
                           "and over the render's face box only)",
                "text_distance": "mean distance between the token-pooled text features of captions that differ "
                                 "only in the attribute, over their mean norm"}}


@torch.no_grad()
def evaluate_attribute_energy(pipe, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """Each attribute's share of what two random test renders differ by, in the latent and in pixels (see the
    module docstring)."""
    from data_prep.faceworld.attributes import ATTRIBUTES, split_range, with_value
    from data_prep.faceworld.render import FaceWorld
    from models.pixel_space import PixelSpace
    from pretrain.world.common import face_weight_map

    if cfg.energy_level_gains and not isinstance(pipe.autoencoder, PixelSpace):
        raise ValueError("other level gains apply to a pixel-space world only")
    others = {",".join(f"{g:g}" for g in gains): PixelSpace(dataclasses.replace(pipe.autoencoder.config,
                                                                                  level_gains=gains)).to(device)
              for gains in cfg.energy_level_gains}
    n = cfg.energy_renders
    world = FaceWorld(seed, pipe.image_size, device, chunk=cfg.batch)
    ids = split_range("test")[0] + np.arange(n, dtype=np.int64)
    base = world.render(ids, 1)
    x0 = to_signed(base.images).to(device).float()
    z0 = pipe.autoencoder.encode(x0.to(pipe.dtype)).float()
    z_var, x_var = float(z0.var(dim=0).mean()), float(x0.var(dim=0).mean())
    boxes = torch.as_tensor(base.boxes, device=device) * (z0.shape[-1] / pipe.image_size)
    maps = {w: face_weight_map(boxes, z0.shape[-1], w)[:, 0] for w in ENERGY_FACE_WEIGHTS}  # [n, h, w] each
    pair = 2 * z0.var(dim=0).mean(dim=0)  # [h, w]: a random pair's mean squared difference per latent cell
    pair_weighted = {w: float((m * pair).mean()) for w, m in maps.items()}
    other_z0 = {k: space.encode(x0).float() for k, space in others.items()}
    other_pair = {k: 2 * float(z.var(dim=0).mean()) for k, z in other_z0.items()}
    visible = 60 / 127.5  # a summed |change| over the 3 channels of 60 levels of 255
    out: dict[str, dict[str, float]] = {}
    for name, values in ATTRIBUTES.items():
        cells, where, dx, seen = [], [], [], []  # per changed render: latent change per cell, its index, ...
        other_dz: dict[str, list[torch.Tensor]] = {k: [] for k in others}
        for value in values:
            keep = [i for i, a in enumerate(base.attributes) if a[name] != value
                    and not (name == "hat_color" and a["hat"] == "none")]  # a colour needs a hat
            if not keep:
                continue
            changed = world.render(ids[keep], 1, [with_value(base.attributes[i], name, value) for i in keep])
            x = to_signed(changed.images).to(device).float()
            z = pipe.autoencoder.encode(x.to(pipe.dtype)).float()
            cells.append((z - z0[keep]).pow(2).mean(dim=1))  # [k, h, w]
            where.append(torch.as_tensor(keep, device=device))
            dx.append((x - x0[keep]).pow(2).mean(dim=(1, 2, 3)))
            for k, space in others.items():
                other_dz[k].append((space.encode(x).float() - other_z0[k][keep]).pow(2).mean(dim=(1, 2, 3)))
            seen.append(((x - x0[keep]).abs().sum(dim=1) > visible).float().mean(dim=(1, 2)))
        if cells:
            change, rows = torch.cat(cells), torch.cat(where)
            out[name] = {"latent_share": float(change.mean()) / (2 * z_var),  # a random pair: 2 var
                         "pixel_share": float(torch.cat(dx).mean()) / (2 * x_var),
                         "pixels_changed": float(torch.cat(seen).mean()), "pairs": len(rows),
                         "latent_share_face_weight": {f"{w:g}": float((m[rows] * change).mean()) / pair_weighted[w]
                                                      for w, m in maps.items()},
                         **({"latent_share_level_gains": {k: float(torch.cat(d).mean()) / other_pair[k]
                                                          for k, d in other_dz.items()}} if others else {})}
    return {"attribute_energy": out,
            "attribute_energy_setup": {"renders": n, "render_index": 1, "latent_variance": z_var,
                                       "pixel_variance": x_var, "visible_change": "summed |change| > 60 of 255"}}


@torch.no_grad()
def evaluate_text_dependence(world_dir: Path, pipe, seed: int, cfg: EvalConfig, device: torch.device) -> dict:
    """R^2 of the predicted clean image's mean colour at the noisiest timesteps (see the module docstring)."""
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld
    from models.world_clip import load_world_clip

    n = cfg.dependence_renders
    lo, _ = split_range("test")
    renders = FaceWorld(seed, pipe.image_size, device, chunk=n).render(lo + np.arange(n, dtype=np.int64), 1)
    pixels = to_signed(renders.images).to(device)
    tokenizer, clip = load_world_clip(world_dir / "world_clip", device=device, dtype=torch.float32)
    text = clip.text_features(tokenizer(list(renders.captions)).to(device)).float()
    clip0 = clip.encode_image(pixels).float()[:, None]
    g = torch.Generator(device="cpu").manual_seed(seed)
    z0 = pipe.autoencoder.encode(pixels.to(pipe.dtype)).float()
    true_mean = pixels.mean(dim=(2, 3))

    def r2(pred: torch.Tensor) -> float:
        return float(1 - ((pred - true_mean) ** 2).sum() / ((true_mean - true_mean.mean(0)) ** 2).sum())

    out = {}
    for t in DEPENDENCE_TIMESTEPS:
        eps_z = torch.randn(z0.shape, generator=g).to(device)
        eps_c = torch.randn(clip0.shape, generator=g).to(device)
        z_n = pipe.schedule.add_noise(z0, eps_z, t)
        clip_n = pipe.schedule.add_noise(clip0, eps_c, t)
        row = {}
        for name, txt, z in (("own_caption", text, z_n), ("shuffled_caption", text.roll(1, 0), z_n),
                             ("noise_image", text, eps_z)):
            x0 = pipe.autoencoder.decode(predict_clean(pipe, z, clip_n, txt, t)[1])
            row[name] = round(r2(x0.float().mean(dim=(2, 3))), 4)
        out[str(t)] = row
    return {"text_dependence": {"r2_mean_colour": out, "renders": n,
                                "measure": "R^2 of the predicted clean image's mean colour against the render's"}}


@torch.no_grad()
def _clip_features(clip, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """uint8 [B, H, W, 3] renders or float [B, 3, H, W] in [0, 1] -> image features [B, D] float64."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float() / 255.0
    return np.concatenate([clip.embed_images(c).double().cpu().numpy() for c in images.split(batch)])


def evaluate_captions(world_dir: Path, seed: int, cfg: EvalConfig) -> dict:
    """What training captions reach the text tower with: `cfg.captions` captions of the seed's training
    identities, each stating a random subset as the training stages' captions do, cut to the world-CLIP's
    context as its tokenizer cuts them. The share of captions longer than the context, and per attribute the
    share of the captions stating it whose statement is lost with the cut (parse_caption of the kept words)."""
    from data_prep.faceworld.attributes import CaptionError, parse_caption, split_range
    from data_prep.faceworld.identity import identity_params
    from data_prep.faceworld.render import captions_of, draw_attributes
    from models.tokenizers import WordTokenizer, split_words

    keep = WordTokenizer.from_folder(world_dir / "world_clip").context_length - 2  # BOS and EOS
    rng = np.random.default_rng(seed)
    lo, hi = split_range("train")
    ids, rs = rng.integers(lo, hi, cfg.captions), rng.integers(0, 64, cfg.captions)
    texts = captions_of(seed, ids, rs, draw_attributes(seed, ids, rs), identity_params(seed, ids).class_words)
    stated: dict[str, int] = {}
    lost: dict[str, int] = {}
    lengths = []
    for text in texts:
        cut = split_words(text)
        lengths.append(len(cut))
        try:
            kept = parse_caption(" ".join(cut[:keep]))
        except CaptionError:  # not expected of a caption's first words; if it happens, all of it counts as lost
            kept = {}
        for name, value in parse_caption(text).items():
            stated[name] = stated.get(name, 0) + 1
            lost[name] = lost.get(name, 0) + (kept.get(name) != value)
    lengths = np.array(lengths)
    return {"captions": {"count": len(lengths), "context_words": keep, "split": "train",
                         "words_mean": float(lengths.mean()), "words_max": int(lengths.max()),
                         "longer_than_context": float(np.mean(lengths > keep)),
                         "stated": {k: stated[k] / len(lengths) for k in sorted(stated)},
                         "lost_when_stated": {k: lost[k] / stated[k] for k in sorted(stated)}}}


def folder_sizes(folders: Sequence[Path]) -> dict:
    """{"files": {path: MB}, "total": MB, "copies": {path: the path of the same bytes}} of every file under the
    folders (paths relative to the repo when inside it). The total counts each content once, as git stores it:
    a file with the same bytes as one listed before it (e.g. the autoencoder stage's export and the pipeline's
    copy of it) is listed in "copies" and not added again."""
    import hashlib

    files, copies, first = {}, {}, {}
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            try:
                name = str(path.resolve().relative_to(REPO))
            except ValueError:
                name = str(path)
            files[name] = round(path.stat().st_size / 1e6, 4)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in first:
                copies[name] = first[digest]
            else:
                first[digest] = name
    total = sum(mb for name, mb in files.items() if name not in copies)
    return {"files": files, "total": round(total, 4), "copies": copies}


# ------------------------------------------------------------------------------------------------ all
def evaluate_world(world_dir: str | os.PathLike, seed: int, *, device: torch.device | str = "cpu",
                   cfg: EvalConfig = EvalConfig(), sections: Sequence[str] = SECTIONS,
                   demo_dirs: Sequence[str | os.PathLike] = ()) -> dict:
    """Run the sections on the world folder; returns the result dict (see the module docstring)."""
    from models.image_text import load_image_text_model
    from models.pipeline import UniDiffuserT2I, folder_sampler_policy
    from pretrain.world.attributes import EXPORT_DIR, AttributeClassifier

    world_dir, device = Path(world_dir), torch.device(device)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    from data_prep.faceworld.attributes import split_range
    result: dict = {"format": "world-foundation", "version": 1, "world": str(world_dir), "renderer_seed": seed,
                    "world_sha256": world_backbone_sha256(world_dir), "sampler": folder_sampler_policy(world_dir),
                    "test_identities": {"split": "test", "range": list(split_range("test"))},
                    "sections": list(sections), "seconds": {}}
    classifier = pipe = clip = latent = None
    if {"reconstruction", "t2i_ceiling"} & set(sections):  # (autoencoder, where), loaded once for both
        latent = world_latent_space(world_dir, device)
    if {"attributes", "reconstruction", "text_to_image", "t2i_ceiling", "single_attribute"} & set(sections):
        classifier = AttributeClassifier.from_folder(world_dir / EXPORT_DIR, device)
    if {"text_to_image", "single_attribute", "backbone_attributes", "attribute_energy", "frechet",
            "text_dependence"} & set(sections):
        pipe = UniDiffuserT2I.from_pretrained(world_dir, device=device,
                                              dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    if {"frechet", "clip_attributes"} & set(sections):
        clip, _ = load_image_text_model(root=world_dir, device=device)
    for name in SECTIONS:
        if name not in sections:
            continue
        t0, before = time.perf_counter(), set(result)
        if name == "faces":
            result.update(evaluate_faces(world_dir, seed, cfg, device))
        elif name == "attributes":
            result.update(evaluate_attributes(world_dir, seed, cfg, device, classifier))
        elif name == "reconstruction":
            result.update(evaluate_reconstruction(*latent, classifier, seed, cfg, device, world_dir))
        elif name == "text_to_image":
            result.update(evaluate_text_to_image(pipe, classifier, seed, cfg))
        elif name == "t2i_ceiling":
            result.update(evaluate_t2i_ceiling(*latent, classifier, seed, cfg, device))
        elif name == "single_attribute":
            result.update(evaluate_single_attribute(pipe, classifier, seed, cfg))
        elif name == "clip_attributes":
            result.update(evaluate_clip_attributes(clip, seed, cfg, device))
        elif name == "backbone_attributes":
            result.update(evaluate_backbone_attributes(world_dir, pipe, seed, cfg, device))
        elif name == "attribute_energy":
            result.update(evaluate_attribute_energy(pipe, seed, cfg, device))
        elif name == "frechet":
            result.update(evaluate_frechet(pipe, clip, seed, cfg, device))
        elif name == "text_dependence":
            result.update(evaluate_text_dependence(world_dir, pipe, seed, cfg, device))
        elif name == "captions":
            result.update(evaluate_captions(world_dir, seed, cfg))
        else:
            result["demo_parts_mb"] = folder_sizes([world_dir, *map(Path, demo_dirs)])
        unnamed = set(result) - before - set(SECTION_KEYS[name])
        assert not unnamed, f"section {name} wrote {sorted(unnamed)}, not in SECTION_KEYS[{name!r}]"
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
        print(f"[evaluate] {name} done in {result['seconds'][name]:.1f} s", flush=True)
    result["config"] = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return result


def read_include(path: str | os.PathLike, world_dir: Path, seed: int, sections: Sequence[str]) -> dict:
    """An earlier `evaluate` JSON whose sections can join this run's (see the module docstring), checked
    before this run measures anything; raises UserError (one line) when it cannot."""
    import json

    from models.errors import UserError

    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--include {path}: cannot read it as JSON ({e})") from None
    if other.get("format") != "world-foundation":
        raise UserError(f"--include {path}: not a `pretrain.world evaluate` JSON (format {other.get('format')!r})")
    theirs, ours = other.get("world_sha256") or {}, world_backbone_sha256(world_dir)
    if theirs != ours:
        unrecorded = theirs == {k: v for k, v in ours.items() if k != "model_configs.json"}  # the same weights
        raise UserError(f"--include {path}: " + ("it does not record the model_configs.json it sampled with (made "
                                                 "before that file was hashed)" if unrecorded else
                                                 f"it measured other backbone files than {world_dir}'s (world_sha256 "
                                                 f"differs)") + ": evaluate this world instead")
    if other.get("renderer_seed") != seed:
        raise UserError(f"--include {path}: renderer seed {other.get('renderer_seed')} is not this run's {seed}")
    if not set(other["sections"]) - set(sections):
        raise UserError(f"--include {path}: every section of it ({', '.join(other['sections'])}) is measured by "
                        f"this run too: it would add nothing")
    return other


def add_include(result: dict, path: str | os.PathLike, other: dict) -> None:
    """Add read_include's sections to this run's result, those this run did not measure (its own measurement of
    a section wins: its keys, SECTION_KEYS, are taken from this run), with where they came from (`included`)."""
    from models.errors import UserError

    sections = [s for s in other["sections"] if s not in result["sections"]]
    keys = [k for s in sections for k in SECTION_KEYS[s] if k in other]
    taken = set(keys) & set(result)
    if taken:
        raise UserError(f"--include {path}: {sorted(taken)} are this run's already")
    result.update({k: other[k] for k in keys})
    result["sections"] = result["sections"] + sections
    result.setdefault("included", []).append(
        {"path": str(path), "sections": sections, "seconds": other.get("seconds"),
         "config": other.get("config"), "device": other.get("device"), "commands": other.get("commands"),
         "git_commit": other.get("git_commit"), "git_dirty": other.get("git_dirty")})


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pretrain.world.common import gain_list

    p.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder")
    p.add_argument("--seed", type=int, required=True, help="renderer seed of the test identities")
    p.add_argument("--out", type=Path, default=Path("eval/results/world_foundation.json"), help="JSON to write")
    p.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a few images of each kind (CPU tests)")
    p.add_argument("--only", default=None, help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--steps", type=int, default=30, help="headline steps of text_to_image (default 30)")
    p.add_argument("--guidance", type=float, default=7.0, help="headline guidance of text_to_image (default 7)")
    p.add_argument("--t2i-images", type=number(int, low=1), default=None, metavar="N",
                   help="images per prompt of text_to_image and single_attribute (default 8; 1 with --tiny)")
    p.add_argument("--classify-renders", type=number(int, low=1), default=None, metavar="N",
                   help="test renders of backbone_attributes (default 120; 3 with --tiny)")
    p.add_argument("--energy-level-gains", type=gain_list, action="append", default=[], metavar="G1,G2,..",
                   help="attribute_energy also under these band gains of the pixel space (finest first, as the "
                        "backbone stage's --level-gains); repeatable")
    p.add_argument("--headline-only", action="store_true",
                   help="text_to_image and frechet at the headline steps and guidance only, not the whole grid "
                        "(CPU; e.g. --guidance 3 for frechet's usual figure)")
    p.add_argument("--frechet-images", type=number(int, low=2), default=None, metavar="N",
                   help="generated (and real) images per frechet grid point (default 1000)")
    p.add_argument("--demo", action="append", default=[], help="a further folder the demo commits (sizes)")
    p.add_argument("--include", action="append", default=[], metavar="JSON",
                   help="add the sections of an earlier evaluate JSON of the same backbone files and seed "
                        "(e.g. text_to_image and frechet made on a GPU); repeatable")


def run(args: argparse.Namespace, command: str) -> int:
    """The CLI's evaluate command: evaluate, add commands and commit, write the JSON atomically."""
    import json

    from data_prep.faceworld.render import renderer_version, use_folder_version
    from pretrain.world.common import write_json

    use_folder_version(args.world)  # the test renders the world's models were trained on
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    cfg = dataclasses.replace(EvalConfig.tiny() if args.tiny else EvalConfig(), steps=args.steps,
                              guidance=args.guidance)
    if args.headline_only:
        cfg = dataclasses.replace(cfg, t2i_grid=False, frechet_grid=False)
    if args.frechet_images is not None:
        cfg = dataclasses.replace(cfg, frechet_images=args.frechet_images)
    if args.t2i_images is not None:
        cfg = dataclasses.replace(cfg, t2i_images=args.t2i_images)
    if args.energy_level_gains:
        cfg = dataclasses.replace(cfg, energy_level_gains=tuple(args.energy_level_gains))
    if args.classify_renders is not None:
        cfg = dataclasses.replace(cfg, classify_renders=args.classify_renders)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else SECTIONS
    included = [(path, read_include(path, Path(args.world), args.seed, sections)) for path in args.include]
    t0 = time.perf_counter()
    result = evaluate_world(args.world, args.seed, device=device, cfg=cfg, sections=sections, demo_dirs=args.demo)
    for path, other in included:
        add_include(result, path, other)
    result["commands"] = {"evaluate": command}
    result["renderer_version"] = renderer_version()
    result.update(git_provenance())
    result["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    write_json(args.out, result)
    headline = {k: result[k] for k in ("tar_at_far_1e-3", "colour_histogram_tar_at_far_1e-3", "attribute_accuracy",
                                       "reconstruction_attribute_accuracy",
                                       "text_to_image_attribute_success", "text_to_image_ceiling",
                                       "single_attribute_success",
                                       "single_attribute_unasked", "clip_attribute_accuracy",
                                       "backbone_attribute_accuracy", "attribute_energy", "frechet_world_clip",
                                       "text_dependence", "captions")
                if k in result}
    if "demo_parts_mb" in result:
        headline["demo_parts_mb_total"] = result["demo_parts_mb"]["total"]
    print(json.dumps(headline, indent=1))
    print(f"written to {args.out}")
    return 0


def command_line(argv: Sequence[str] | None) -> str:
    """`python -m pretrain.world <argv>` as run."""
    return shlex.join(["python", "-m", "pretrain.world", *(sys.argv[1:] if argv is None else argv)])
