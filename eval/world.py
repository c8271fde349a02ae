"""python -m eval.world: does the identity module carry identity? (issue 16) One command, any seed.

    python -m eval.world --seed S --identities N [--photos 3,10] [--device cuda|cpu]
        [--methods encoder,text_only,finetune,ceiling] [--out DIR] [--world checkpoints/world]
        [--prompts 10] [--seeds 3] [--json eval/results/synthworld.json] [--workers 8]

Renders N test identities of renderer seed S (data_prep.faceworld: photo folders, prompt files; no
one tuned anything on them), personalises and generates with each method, scores every image with
the world's frozen judges (eval/world_scores.py) and writes one JSON. Methods, all on the same
identities, photos, prompts and sampling seeds:

    encoder    train.py on the photo folder (the real CLI's main, in this process), then sample.py
               (its main) with the identity module: what the product does
    text_only  the same prompts (with their class word) through the plain pipeline: sample.py's
               generation code (personalize.generate) without identity tokens
    finetune   per-identity fine-tuning of the backbone with a rare-token caption
               (eval/finetune_baseline.py), at the best setting of its validation grid
               (eval/results/finetune_grid.json: `python -m eval.finetune_baseline grid`)
    ceiling    real renders of the person under each prompt's attributes (FaceWorld.render with
               the attributes given): what a perfect method would produce

Prompts per person: --prompts reproduction prompts (layout `sim`: "a photo of a boy", ...) and
--prompts edit prompts (layout `edit`: one to three attributes changed, the first two a held-out
attribute pair), --n images each, for each of --seeds sampling seeds: the prompt file holds the
prompts once per seed, so one sample.py call covers all seeds (prompt i of seed j is entry j P + i,
sampled with seed 42 + j P + i, sample.py's rule). Identity is scored against the person's reference
renders (render indices REF_RENDER on, never among the photos). Numbers are means over identities
with bootstrap 95 % intervals (identities resampled); the headline is at --headline-photos
(default: the first of --photos).

A run stopped part way can be read before it is finished: `--aggregate-only` runs nothing and writes the
JSON from the identities that have every unit of --methods (`aggregated_identities` names them).

Work folder (default runs/eval_world/seed<S>), every unit written atomically, so a rerun resumes
(`weights.json` there: the files each method was scored with, the backbone's (BACKBONE_FILES: model_configs.json
with its sampler policy among them) and the module's; a rerun with others stops; the JSON's `world_sha256`):

    data/                 the rendered folders (photos, eval_prompts/, faceworld.json); photos<K>/<name>/
    prompts/<name>.json   the evaluated prompt file (sim then edit, once per seed)
    records/p<K>/<name>/  train.py's identity records      faces/  cached face features (references, photos)
    images/<method>/...   generated images (<prompt>-<k:03>.jpg, as sample.py writes them)
    scores/<method>/p<K>/s<seed>/<name>.json    one unit: done when it exists
    timing/<method>/p<K>/<name>.json            personalisation seconds (in-process / whole command)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoder.config import id_start_value
from eval.world_scores import (
    FaceFeatures,
    WorldScorer,
    bootstrap_interval,
    copy_paste,
    edit_success,
    expression_diversity,
    identity_similarity,
    pose_diversity,
)
from models.errors import UserError
from models.paths import WORLD_BACKBONE_FILES

REPO = Path(__file__).resolve().parent.parent
METHODS = ("encoder", "text_only", "finetune", "ceiling")
PERSONALISED = ("encoder", "finetune")  # methods with a personalisation step per identity
REF_RENDER = 1000  # reference renders of a person: render indices REF_RENDER .. + refs - 1
CEILING_RENDER = 100_000  # ceiling image <e>-<k> (entry e of the seeded prompt file): render CEILING_RENDER + n e + k
SEED_BASE = 42  # sample.py --seed: prompt i of sampling seed j (entry j * P + i of the file) gets 42 + j * P + i
JPEG_QUALITY = 95  # how sample.py writes images (personalize.generate); renders go through the same
# Reproduction prompts: the renderer's three (data_prep.faceworld.folders.SIM_PROMPTS) first, then more
# phrasings from its grammar that change nothing a portrait shows.
SIM_TEMPLATES = ("a photo of a {w}", "a {w}", "a close-up photo of a {w}", "a portrait photo of a {w}",
                 "a photograph of a {w}", "a photo of a {w} without a hat", "a portrait photo of a {w} with no glasses",
                 "a close-up photo of a {w} without glasses", "a photograph of a {w} with no hat",
                 "a photo of a {w} without glasses")
# metric -> the prompt layout its headline number is taken on
HEADLINE = {"identity_similarity": "all", "identity_similarity_found": "all", "edit_success": "edit",
            "copy_paste": "all", "clip_text": "edit",
            "face_found": "all", "class_word": "all", "pose_diversity": "all", "expression_diversity": "all"}
LAYOUTS = ("all", "sim", "edit")
RESULTS = Path("eval/results/synthworld.json")
# what train.py imports when it runs (an already-loaded process has them)
WARM_IMPORTS = ("encoder.face_analysis", "encoder.identity", "personalize.extract", "insightface.model_zoo.model_zoo",
                "onnxruntime")


# the identity module's personalisation and sampling settings (a unit's key holds those off their defaults)
IDENTITY_SETTINGS = ("id_scale", "id_guidance", "id_start", "refine_steps", "photo_tokens")


@dataclass(frozen=True)
class Plan:
    """What is evaluated (the command line's numbers)."""

    seed: int
    identities: int
    photos: tuple[int, ...] = (3, 10)
    methods: tuple[str, ...] = METHODS
    prompts: int = 10
    seeds: int = 3
    n: int = 3
    steps: int = 30
    cfg: float = 7.0
    refs: int = 5
    split: str = "test"
    headline_photos: int | None = None
    command_timing: int = 3
    id_scale: float = 1.0  # sample.py --id-scale of the identity module
    id_guidance: float | None = None  # sample.py --id-guidance (None: the text guidance scale, two passes)
    id_start: float = 1.0  # sample.py --id-start: the identity only at noise levels t <= id_start
    refine_steps: int = 0  # train.py --refine-steps: identity-token refinement on the photos
    photo_tokens: str = "mean"  # sample.py --photo-tokens: the mean embedding's tokens, or each photo's

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
        if not self.photos or min(self.photos) < 1 or self.identities < 1 or self.prompts < 1 or self.seeds < 1:
            raise ValueError("--photos, --identities, --prompts and --seeds must be at least 1")
        if self.prompts > len(SIM_TEMPLATES):
            raise ValueError(f"at most {len(SIM_TEMPLATES)} prompts per layout (SIM_TEMPLATES)")
        if self.photo_tokens not in ("mean", "each") or (self.photo_tokens == "each" and self.refine_steps):
            raise ValueError("--photo-tokens is mean or each, and each needs --refine-steps 0 (refined tokens are "
                             "the pooled photos')")

    @property
    def headline(self) -> int:
        return self.headline_photos or self.photos[0]

    @property
    def identity_settings(self) -> dict:
        """The identity module's personalisation and sampling settings where they differ from train.py's
        and sample.py's defaults (so that units scored at the defaults keep their keys)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in IDENTITY_SETTINGS
                and getattr(self, f.name) != f.default}

    def records(self, k: int) -> str:
        """The folder of train.py's records for photo count k (one per refinement setting)."""
        return f"p{k}" + (f"_refine{self.refine_steps}" if self.refine_steps else "")

    def train_flags(self, world: Path) -> list[str]:
        """train.py's flags for the identity module's personalisation settings."""
        return ["--weights", str(world), "--refine-steps", str(self.refine_steps)] if self.refine_steps else []

    def sample_flags(self) -> list[str]:
        """sample.py's flags for the identity module's sampling settings."""
        flags = ["--id-scale", f"{self.id_scale:g}"]
        flags += [] if self.photo_tokens == "mean" else ["--photo-tokens", self.photo_tokens]
        flags += [] if self.id_guidance is None else ["--id-guidance", f"{self.id_guidance:g}"]
        return flags + ["--id-start", f"{self.id_start:g}"]  # always: a module's own default must not change the plan

    @staticmethod
    def sampling_seed(j: int, prompts: int) -> int:
        """The generator seed of the first prompt of sampling seed j (prompt i: this + i)."""
        return SEED_BASE + j * prompts


@dataclass
class Person:
    """One rendered identity: name (folder), identity index, class word, prompts [{text, layout, wanted}]."""

    name: str
    identity: int
    class_word: str
    prompts: list[dict] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [p["text"] for p in self.prompts]


# ------------------------------------------------------------------------------------------- data
def prepare_data(plan: Plan, out: Path, progress: bool = True) -> list[Person]:
    """Render (or reuse) the photo folders and prompt files; write prompts/<name>.json and photos<K>/."""
    from data_prep.faceworld.attributes import parse_caption
    from data_prep.faceworld.folders import write_folders
    from models.atomic import write_json_atomic

    data = out / "data"
    side = rendered_side(out)
    wanted = {"seed": plan.seed, "split": plan.split, "photos": max(plan.photos), "people": plan.identities,
              "edits": plan.prompts}
    have = None if side is None else {"seed": side["seed"], "split": side["split"], "photos": side["photos"],
                                      "people": len(side["people"]),
                                      "edits": len(side["people"][0]["prompts"]["edit"])}
    if have != wanted:  # absent, cut short, or made for other numbers: render again (deterministic)
        shutil.rmtree(data, ignore_errors=True)
        side = write_folders(data, seed=plan.seed, identities=plan.identities, photos=max(plan.photos),
                             split=plan.split, edits=plan.prompts, progress=progress)
    people = []
    for rec in side["people"]:
        w = rec["class_word"]
        sim = [{"text": t.format(w=w), "layout": "sim", "wanted": parse_caption(t.format(w=w))}
               for t in SIM_TEMPLATES[:plan.prompts]]
        edit = [{"text": e["text"], "layout": "edit", "wanted": e["attributes"], "held_out": e.get("held_out", [])}
                for e in rec["prompts"]["edit"][:plan.prompts]]
        person = Person(rec["name"], int(rec["identity"]), w, sim + edit)
        prompt_file = out / "prompts" / f"{person.name}.json"
        seeded = person.texts * plan.seeds  # once per sampling seed (Evaluation.options)
        if not prompt_file.is_file() or json.loads(prompt_file.read_text()) != seeded:
            write_json_atomic(prompt_file, seeded, indent=1)
        for k in plan.photos:
            folder = photo_dir(out, k, person.name)
            if not folder.is_dir():
                tmp = folder.with_name(f".{person.name}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for src in sorted((data / person.name).iterdir())[:k]:
                    shutil.copyfile(src, tmp / src.name)
                tmp.rename(folder)
        people.append(person)
    return people


def side_path(out: Path) -> Path:
    """Where a work folder keeps the renderer's side file (data/faceworld.json)."""
    from data_prep.faceworld.folders import SIDE_FILE

    return out / "data" / SIDE_FILE


def rendered_side(out: Path) -> dict | None:
    """The renderer's side file of a work folder (seed, split, people), or None where the folder has none
    (not rendered yet, or a copy that came back without its data)."""
    path = side_path(out)
    return json.loads(path.read_text()) if path.is_file() else None


def photo_dir(out: Path, k: int, name: str) -> Path:
    return out / "data" / f"photos{k}" / name


def read_images(folder: Path, indices, n: int) -> list[np.ndarray]:
    """<i>-<k:03>.jpg for i in indices, k < n, as uint8 RGB arrays (prompt-major)."""
    return [np.asarray(Image.open(folder / f"{i}-{k:03}.jpg").convert("RGB")) for i in indices for k in range(n)]


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """What an image becomes when written as sample.py writes it (JPEG, quality 95) and read back."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _save_npz(path: Path, arrays: dict) -> None:
    from models.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def reference_renders(world, identity: int, refs: int) -> list[np.ndarray]:
    """The person's `refs` reference renders (render indices REF_RENDER on, portrait mode like the photos,
    never among them), as JPEG-written photos are: what identity similarity compares against."""
    batch = world.render(np.full(refs, identity), REF_RENDER + np.arange(refs), mode="portrait")
    return [jpeg_round_trip(a) for a in batch.images.cpu().numpy()]


def reference_faces(scorer: WorldScorer, world, plan: Plan, person: Person, out: Path) -> FaceFeatures:
    """Faces of the person's reference renders (reference_renders), cached."""
    path = out / "faces" / f"{person.name}.refs{plan.refs}.npz"
    if path.is_file():
        return FaceFeatures.from_dict(dict(np.load(path)))
    faces = scorer.faces_of(reference_renders(world, person.identity, plan.refs))
    _save_npz(path, faces.to_dict())
    return faces


def photo_faces(scorer: WorldScorer, out: Path, person: Person, k: int) -> FaceFeatures:
    """Faces of the person's K conditioning photos (the files methods were given), cached."""
    path = out / "faces" / f"{person.name}.photos{k}.npz"
    if path.is_file():
        return FaceFeatures.from_dict(dict(np.load(path)))
    folder = photo_dir(out, k, person.name)
    faces = scorer.faces_of([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())])
    _save_npz(path, faces.to_dict())
    return faces


# ---------------------------------------------------------------------------------------- scoring
def _nanmean(values) -> float | None:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


@dataclass
class ImageFeatures:
    """What the judges see in a unit's images (prompt-major, n per prompt): faces, attribute
    predictions, world-CLIP text similarity to their prompts. They do not depend on the photo count,
    so units of one image set share them."""

    faces: FaceFeatures
    preds: list[dict]
    clip_text: np.ndarray


def image_features(scorer: WorldScorer, images: list[np.ndarray], person: Person, n: int) -> ImageFeatures:
    texts = [p["text"] for p in person.prompts for _ in range(n)]
    return ImageFeatures(scorer.faces_of(images), scorer.attributes_of(images), scorer.clip_text(images, texts))


def score_images(feats: ImageFeatures, person: Person, n: int, cond: FaceFeatures, refs: FaceFeatures) -> dict:
    """Scores of one unit's images: per prompt and per layout means (cond: the conditioning photos'
    faces, refs: the reference renders')."""
    from pretrain.world.attributes import CLASS_WORD

    faces, preds, clip_t = feats.faces, feats.preds, feats.clip_text
    wanted = [p["wanted"] for p in person.prompts for _ in range(n)]
    ident = identity_similarity(faces, refs)
    paste = copy_paste(faces, cond, refs)
    edits = edit_success(preds, wanted)
    word = np.array([p.get(CLASS_WORD) == person.class_word for p in preds])
    prompts = []
    for i, p in enumerate(person.prompts):
        sl = slice(i * n, (i + 1) * n)
        prompts.append({
            "text": p["text"], "layout": p["layout"], "identity_similarity": ident[sl].tolist(),
            "face_found": faces.found[sl].tolist(), "copy_paste": [None if not np.isfinite(v) else float(v)
                                                                  for v in paste[sl]],
            "edit_success": edits[sl].tolist(), "class_word": word[sl].tolist(), "clip_text": clip_t[sl].tolist(),
            "pose_diversity": pose_diversity(faces.landmarks[sl], faces.found[sl]),
            "expression_diversity": (expression_diversity(preds[sl]) if "expression" not in p["wanted"]
                                     else None)})
    means = {}
    for layout in LAYOUTS:
        rows = [r for r in prompts if layout == "all" or r["layout"] == layout]
        flat = lambda key, rows=rows: [v for r in rows for v in r[key]]  # noqa: E731
        found = [v for v, f in zip(flat("identity_similarity"), flat("face_found"), strict=True) if f]
        means[layout] = {
            "identity_similarity": _nanmean(flat("identity_similarity")),
            "identity_similarity_found": _nanmean(found),
            "face_found": _nanmean(flat("face_found")), "copy_paste": _nanmean(flat("copy_paste")),
            "edit_success": _nanmean(flat("edit_success")), "class_word": _nanmean(flat("class_word")),
            "clip_text": _nanmean(flat("clip_text")),
            "pose_diversity": _nanmean(r["pose_diversity"] for r in rows),
            "expression_diversity": _nanmean(r["expression_diversity"] for r in rows)}
    return {"prompts": prompts, "means": means}


def unit_settings(key: dict) -> dict:
    """The part of a unit's key (Evaluation.unit_key) that a whole evaluation shares: without the prompt
    texts and the sampling seed, which differ by person and seed index, and with the prompt count."""
    shared = {n: v for n, v in key.items() if n not in ("prompts", "seed")}
    return {**shared, "prompts_per_identity": len(key["prompts"])}


def unit_path(out: Path, method: str, k: int, j: int, name: str) -> Path:
    return out / "scores" / method / f"p{k}" / f"s{j}" / f"{name}.json"


# ---------------------------------------------------------------------------------------- methods
def _load_cli(name: str):
    """The repository's train.py / sample.py as a module (its `main(argv)`)."""
    spec = importlib.util.spec_from_file_location(f"faceid_cli_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(module, argv: list[str], log: Path) -> tuple[float, str]:
    """module.main(argv) in this process, its output appended to `log`; returns (seconds, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        t0 = time.perf_counter()
        try:
            code = module.main(argv)
        finally:
            seconds = time.perf_counter() - t0
            with open(log, "a") as f:
                f.write(f"$ {module.__name__} {shlex.join(argv)}\n{buf.getvalue()}")
    if code:
        raise RuntimeError(f"{module.__name__} {shlex.join(argv)} exited with {code}; see {log}")
    return seconds, buf.getvalue()


TRAIN_TIMES = re.compile(r"face models loaded in ([0-9.]+) s, photos processed in ([0-9.]+) s")


def wall_clock(argv: list[str], log: Path, timeout: float = 3600) -> float:
    """Seconds of a whole command (a fresh Python process: interpreter, imports, loading, work)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}; see {log}")
    return seconds


def plain_pipeline(world: Path, device: torch.device, dtype: torch.dtype | None = None):
    """The world's plain pipeline as sample.py loads it: `dtype` (default: sample.py's auto, bfloat16 on
    CUDA, float32 on the CPU), the fast path on CUDA."""
    from models.device import pick_dtype
    from models.execution import Execution
    from models.pipeline import UniDiffuserT2I

    pipe = UniDiffuserT2I.from_pretrained(world, device=device, dtype=dtype or pick_dtype("auto", device))
    if device.type == "cuda":
        pipe.execution = Execution.fast_path(device, pipe.dtype, None)
    return pipe


def generate_text_only(pipe, prompts: list[str], images: Path, options, world: Path, progress: bool = False) -> dict:
    """Text only: the prompts (with their class word) through the plain pipeline, by sample.py's generation
    code (personalize.generate) without identity tokens; <prompt index>-<k:03>.jpg in `images`, resumable.
    Returns generate_prompts' summary."""
    from personalize.generate import generate_prompts

    return generate_prompts(pipe, pipe.execution.net(pipe.uvit), None, prompts, images, options, progress=progress,
                            fingerprint={"method": "text_only", "world": str(world)})


class Evaluation:
    """Runs the plan's methods into the work folder `out` (see the module docstring); resumable."""

    def __init__(self, plan: Plan, out: Path, world: Path, device: torch.device, encoder: Path | None,
                 finetune_setting, progress: bool = True):
        self.plan, self.out, self.world, self.device = plan, out, world, device
        self.encoder = encoder or world / "faceid_encoder"
        self.finetune_setting = finetune_setting  # (FinetuneConfig, where it came from)
        self.progress = progress
        self._scorer = self._pipe = self._tuner = self._renderer = None
        self._features: dict[tuple[str, int], ImageFeatures] = {}
        self.wall: dict[str, float] = {}

    # ---- lazily loaded models
    @property
    def scorer(self) -> WorldScorer:
        if self._scorer is None:
            self._scorer = WorldScorer.from_world(self.world, self.device)
        return self._scorer

    @property
    def renderer(self):
        if self._renderer is None:
            from data_prep.faceworld.render import FaceWorld

            self._renderer = FaceWorld(self.plan.seed, 64, self.device)
        return self._renderer

    @property
    def pipe(self):
        """The plain pipeline as sample.py runs it (fast path on CUDA)."""
        if self._pipe is None:
            self._pipe = plain_pipeline(self.world, self.device)
        return self._pipe

    @property
    def tuner(self):
        if self._tuner is None:
            from eval.finetune_baseline import Finetuner
            from models.image_clip import ImageCLIP

            self._tuner = Finetuner(self.pipe, ImageCLIP.from_pretrained(self.world, device=self.device))
        return self._tuner

    def options(self):
        """Generation options of every method: the prompt file holds the prompts once per seed, prompt
        i of seed j is entry j * P + i, generated with seed SEED_BASE + j * P + i (personalize.generate)."""
        from personalize.generate import GenerateOptions

        return GenerateOptions(n_per_prompt=self.plan.n, steps=self.plan.steps, cfg=self.plan.cfg, seed=SEED_BASE)

    def seeded(self, person: Person) -> list[str]:
        """The prompts once per sampling seed (what the methods generate)."""
        return person.texts * self.plan.seeds

    # ---- shared
    def score_unit(self, method: str, k: int, j: int, person: Person, images_dir: Path, extra: dict) -> dict:
        p = len(person.prompts)
        cache = (str(images_dir), j)
        if cache not in self._features:  # one entry: units of one image set follow each other
            images = read_images(images_dir, range(j * p, (j + 1) * p), self.plan.n)
            self._features = {cache: image_features(self.scorer, images, person, self.plan.n)}
        cond = photo_faces(self.scorer, self.out, person, k)
        refs = reference_faces(self.scorer, self.renderer, self.plan, person, self.out)
        scores = score_images(self._features[cache], person, self.plan.n, cond, refs)
        unit = {"method": method, "photos": k, "seed_index": j, "seed": self.plan.sampling_seed(j, p),
                "name": person.name, "identity": person.identity, "images": str(images_dir),
                "first_prompt_index": j * p, "key": self.unit_key(method, k, j, person), **extra, **scores}
        from models.atomic import write_json_atomic

        write_json_atomic(unit_path(self.out, method, k, j, person.name), unit, indent=1)
        return unit

    def unit_key(self, method: str, k: int, j: int, person: Person) -> dict:
        """What a unit's scores depend on; a unit on disk with another key is done again."""
        plan = self.plan
        key = {"prompts": person.texts, "n": plan.n, "steps": plan.steps, "cfg": plan.cfg,
               "seed": plan.sampling_seed(j, len(person.prompts)), "refs": plan.refs, "photos": k}
        if method == "finetune":
            key["setting"] = self.finetune_setting[0].to_dict()
        if method.startswith("encoder"):
            key.update(plan.identity_settings)
        return json.loads(json.dumps(key))

    def done(self, method: str, k: int, j: int, person: Person) -> bool:
        path = unit_path(self.out, method, k, j, person.name)
        return path.is_file() and json.loads(path.read_text()).get("key") == self.unit_key(method, k, j, person)

    def todo(self, method: str, person: Person, k: int | None = None) -> list[tuple[int, int]]:
        """(photo count, seed index) of the units not done yet (of photo count k only, when given)."""
        return [(kk, j) for kk in self.plan.photos for j in range(self.plan.seeds)
                if (k is None or kk == k) and not self.done(method, kk, j, person)]

    def _timing(self, method: str, k: int, name: str, key: str, seconds: float, extra: dict | None = None) -> None:
        from models.atomic import write_json_atomic

        path = self.out / "timing" / method / f"p{k}" / f"{name}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update({key: seconds, "device": str(self.device), **(extra or {})})
        write_json_atomic(path, data, indent=1)

    # ---- the methods
    def run_encoder(self, people: list[Person], method: str = "encoder") -> None:
        """train.py, then sample.py on the seeded prompt file, per photo count and identity, at the plan's
        identity sampling settings. `method` names the units and images (eval.identity_grid runs one name
        per setting); train.py's records do not depend on it."""
        train_cli, sample_cli = _load_cli("train"), _load_cli("sample")
        for module in WARM_IMPORTS:  # imported once, so that the first identity's time is not import time
            importlib.import_module(module)
        dev, plan = self.device.type, self.plan
        for person in people:
            for k in plan.photos:
                todo = self.todo(method, person, k)
                if not todo:
                    continue
                record = self.out / "records" / plan.records(k) / person.name
                if not (record / "identity.json").is_file():
                    seconds, text = run_cli(train_cli, ["-d", str(photo_dir(self.out, k, person.name)), "-o",
                                                        str(record), "--face-pack", str(self.world / "faces"),
                                                        "--encoder", str(self.encoder), *plan.train_flags(self.world),
                                                        "--device", dev, "--quiet"],
                                            self.out / "logs" / "train.log")
                    parts = TRAIN_TIMES.search(text)  # train.py's own split: loading its face models, the photos
                    self._timing("encoder", k, person.name, "in_process", seconds,
                                 {"face_models_loading": float(parts[1]) if parts else None,
                                  "photos_processing": float(parts[2]) if parts else None})
                images = self.out / "images" / method / f"p{k}" / person.name
                run_cli(sample_cli, ["--restore_path", str(record), "--prompt_path", str(self.prompt_file(person)),
                                     "--output_path", str(images), "--weights", str(self.world), "--encoder",
                                     str(self.encoder), "--seed", str(SEED_BASE), "--steps", str(plan.steps),
                                     "--cfg", str(plan.cfg), "--n", str(plan.n), *plan.sample_flags(), "--device",
                                     dev, "--quiet"],
                        self.out / "logs" / "sample.log")
                for _, j in todo:
                    self.score_unit(method, k, j, person, images, {"record": str(record)})

    def prompt_file(self, person: Person) -> Path:
        return self.out / "prompts" / f"{person.name}.json"

    def run_text_only(self, people: list[Person]) -> None:
        """The seeded prompts through the plain pipeline (sample.py's generation, no identity)."""
        for person in people:
            todo = self.todo("text_only", person)
            if not todo:
                continue
            images = self.out / "images" / "text_only" / person.name  # the same for every photo count
            generate_text_only(self.pipe, self.seeded(person), images, self.options(), self.world)
            for k, j in sorted(todo, key=lambda kj: kj[::-1]):  # seed-major: photo counts share features
                self.score_unit("text_only", k, j, person, images, {})

    def run_finetune(self, people: list[Person]) -> None:
        """Fine-tune at the chosen setting per photo count and identity, then generate the seeded prompts."""
        from eval.finetune_baseline import sample_tuned

        cfg, source = self.finetune_setting
        for person in people:
            for k in self.plan.photos:
                todo = self.todo("finetune", person, k)
                if not todo:
                    continue
                folder = photo_dir(self.out, k, person.name)
                snap = next(iter(self.tuner.train(folder, cfg, class_word=person.class_word)))
                self._timing("finetune", k, person.name, "in_process", snap.seconds,
                             {"setting": cfg.to_dict(), "final_loss": snap.losses[-1]})
                images = self.out / "images" / "finetune" / f"p{k}" / person.name
                sample_tuned(self.pipe, snap.uvit, self.seeded(person), person.class_word, images, self.options(),
                             token=cfg.token, fingerprint={"method": "finetune", "setting": cfg.to_dict(),
                                                           "photos": str(folder)})
                for _, j in todo:
                    self.score_unit("finetune", k, j, person, images, {"setting": cfg.to_dict(),
                                                                       "setting_source": source})
                del snap

    def run_ceiling(self, people: list[Person]) -> None:
        """Renders of the person with each seeded prompt's attributes (render index CEILING_RENDER + image
        index), written like generated images."""
        from models.atomic import atomic_write, write_json_atomic

        plan = self.plan
        for person in people:
            todo = self.todo("ceiling", person)
            if not todo:
                continue
            images = self.out / "images" / "ceiling" / person.name  # the same for every photo count
            attrs = [p["wanted"] for _ in range(plan.seeds) for p in person.prompts for _ in range(plan.n)]
            made = images / ".renders.json"
            fingerprint = json.loads(json.dumps({"seed": plan.seed, "identity": person.identity, "attributes": attrs}))
            if not made.is_file() or json.loads(made.read_text()) != fingerprint:
                renders = CEILING_RENDER + np.arange(len(attrs))
                arrays = self.renderer.render(np.full(len(attrs), person.identity), renders, attrs).images.cpu().numpy()
                for idx, a in enumerate(arrays):
                    i, m = divmod(idx, plan.n)
                    atomic_write(images / f"{i}-{m:03}.jpg",
                                 lambda p, a=a: Image.fromarray(a).save(p, format="JPEG", quality=JPEG_QUALITY))
                write_json_atomic(made, fingerprint)
            for k, j in sorted(todo, key=lambda kj: kj[::-1]):
                self.score_unit("ceiling", k, j, person, images, {"renders": "FaceWorld.render, prompt attributes"})

    def time_commands(self, people: list[Person]) -> None:
        """Whole-command wall-clock of personalisation (fresh processes) for the first identities."""
        k = self.plan.headline
        for person in people[: self.plan.command_timing]:
            for method in (m for m in PERSONALISED if m in self.plan.methods):
                path = self.out / "timing" / method / f"p{k}" / f"{person.name}.json"
                if path.is_file() and "command" in json.loads(path.read_text()):
                    continue
                target = (self.out / "command_timing" / method / person.name).resolve()
                shutil.rmtree(target, ignore_errors=True)
                folder, world = str(photo_dir(self.out, k, person.name).resolve()), self.world.resolve()
                if method == "encoder":
                    argv = [sys.executable, "train.py", "-d", folder, "-o", str(target), "--face-pack",
                            str(world / "faces"), "--encoder", str(self.encoder.resolve()),
                            *self.plan.train_flags(world), "--device", self.device.type, "--quiet"]
                else:
                    cfg = self.finetune_setting[0]
                    argv = [sys.executable, "-m", "eval.finetune_baseline", "train", "-d", folder, "-o", str(target),
                            "--weights", str(world), "--mode", cfg.mode, "--steps", str(cfg.steps), "--lr",
                            str(cfg.lr), "--batch-size", str(cfg.batch_size), "--rank", str(cfg.rank), "--alpha",
                            str(cfg.alpha), "--seed", str(cfg.seed), "--device", self.device.type]
                seconds = wall_clock(argv, self.out / "logs" / "commands.log")
                self._timing(method, k, person.name, "command", seconds, {"command_line": shlex.join(argv[1:])})

    def run(self, people: list[Person]) -> None:
        for method in METHODS:
            if method not in self.plan.methods:
                continue
            t0 = time.perf_counter()
            print(f"[eval.world] {method}: {len(people)} identities x {len(self.plan.photos)} photo counts x "
                  f"{self.plan.seeds} seeds", flush=True)
            getattr(self, f"run_{method}")(people)
            self.wall[method] = round(time.perf_counter() - t0, 2)
        if self.plan.command_timing:
            self.time_commands(people)


# -------------------------------------------------------------------------------------- aggregate
def per_identity(out: Path, method: str, k: int, people: list[Person], seeds: int, layout: str, metric: str
                 ) -> list[float]:
    """One value per identity with scores: the mean over its seeds of a unit's layout mean."""
    return list(per_identity_by_name(out, method, k, people, seeds, layout, metric).values())


def per_identity_by_name(out: Path, method: str, k: int, people: list[Person], seeds: int, layout: str,
                         metric: str) -> dict[str, float]:
    """{identity: the mean over its seeds of a unit's layout mean}, for the identities with a value."""
    values = {}
    for person in people:
        units = [unit_path(out, method, k, j, person.name) for j in range(seeds)]
        # .get: units scored before a metric was added lack it (None, like an undefined mean)
        vals = [json.loads(u.read_text())["means"][layout].get(metric) for u in units if u.is_file()]
        v = _nanmean(vals)
        if v is not None:
            values[person.name] = v
    return values


def scored_people(run: Path, method: str, photos: int) -> tuple[list[Person], int]:
    """The identities with units of `method` at `photos` photos in `run`, and the number of sampling seeds."""
    base = run / "scores" / method / f"p{photos}"
    seed_dirs = sorted(p for p in base.glob("s*") if p.is_dir())
    if not seed_dirs:
        raise UserError(f"{base} holds no scored units: is {run} an eval.world work folder that ran "
                        f"--methods {method} with {photos} photos?")
    people = {}
    for unit in seed_dirs[0].glob("*.json"):
        u = json.loads(unit.read_text())
        people[u["name"]] = Person(u["name"], int(u["identity"]), "")
    return [people[n] for n in sorted(people)], len(seed_dirs)


def headline_values(out: Path, method: str, k: int, people: list[Person], seeds: int) -> dict[str, dict]:
    """{metric: {identity: value}} of a method's headline metrics (each on its HEADLINE layout)."""
    return {metric: per_identity_by_name(out, method, k, people, seeds, layout, metric)
            for metric, layout in HEADLINE.items()}


def paired(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """{metric: bootstrap interval of the per-identity differences a - b}, over the identities both have
    (a, b: headline_values of two methods). The same identities, photos, prompts and seeds on both sides,
    so a person's difficulty cancels: a far narrower interval than the two methods' own intervals side by
    side."""
    return {metric: bootstrap_interval([v - b[metric][n] for n, v in vals.items() if n in b[metric]])
            for metric, vals in a.items()}


def paired_differences(out: Path, plan: Plan, people: list[Person], k: int) -> dict:
    """{"encoder - <baseline>": paired(encoder, baseline)} for each baseline run beside the identity module."""
    bases = [b for b in ("text_only", "finetune") if b in plan.methods] if "encoder" in plan.methods else []
    enc = headline_values(out, "encoder", k, people, plan.seeds) if bases else {}
    return {f"encoder - {base}": paired(enc, headline_values(out, base, k, people, plan.seeds)) for base in bases}


def seconds_of(out: Path, method: str, k: int, people: list[Person], key: str) -> list[float]:
    vals = []
    for person in people:
        path = out / "timing" / method / f"p{k}" / f"{person.name}.json"
        if path.is_file() and (data := json.loads(path.read_text())).get(key) is not None:
            vals.append(float(data[key]))
    return vals


def _ratio(a, b) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(head: dict) -> dict:
    """Issue 16's targets on the headline numbers ({value, target, met}; None where a number is missing)."""
    ident, edit, paste, secs = (head["identity_similarity"], head["edit_success"], head["copy_paste"],
                                head["seconds_per_identity"])

    def row(value, target, met):
        return {"value": value, "target": target, "met": None if value is None else bool(met)}

    id_vs_ceiling = _ratio(ident.get("encoder"), ident.get("ceiling"))
    edit_vs_text = _ratio(edit.get("encoder"), edit.get("text_only"))
    speedup = _ratio(secs.get("finetune"), secs.get("encoder"))
    beats = None
    if None not in (ident.get("encoder"), ident.get("finetune"), edit.get("encoder"), edit.get("finetune")):
        beats = ident["encoder"] - ident["finetune"]
    paste_gap = (None if None in (paste.get("encoder"), paste.get("finetune"))
                 else paste["encoder"] - paste["finetune"])
    return {
        "identity_vs_ceiling": row(id_vs_ceiling, ">= 0.8", id_vs_ceiling is not None and id_vs_ceiling >= 0.8),
        "edit_vs_text_only": row(edit_vs_text, ">= 0.9", edit_vs_text is not None and edit_vs_text >= 0.9),
        "identity_above_finetune": row(beats, "> 0 with edit success >= finetune's",
                                       beats is not None and beats > 0 and edit["encoder"] >= edit["finetune"]),
        "speedup_vs_finetune": row(speedup, ">= 100", speedup is not None and speedup >= 100),
        "copy_paste_vs_finetune": row(paste_gap, "<= 0", paste_gap is not None and paste_gap <= 0),
    }


def aggregate(plan: Plan, out: Path, people: list[Person]) -> dict:
    """The results dict: headline numbers, intervals, per photo count and layout, timing, targets."""
    by_photos: dict[str, dict] = {}
    for k in plan.photos:
        by_metric: dict[str, dict] = {}
        for metric in HEADLINE:
            by_metric[metric] = {m: {layout: bootstrap_interval(per_identity(out, m, k, people, plan.seeds, layout,
                                                                             metric)) for layout in LAYOUTS}
                                 for m in plan.methods}
        by_photos[str(k)] = by_metric
    head_k = str(plan.headline)
    intervals = {metric: {m: by_photos[head_k][metric][m][layout] for m in plan.methods}
                 for metric, layout in HEADLINE.items()}
    names = {"clip_text": "clip_text_similarity"}
    result: dict = {names.get(metric, metric): {m: v["mean"] for m, v in rows.items()}
                    for metric, rows in intervals.items()}
    detail = {}
    for m in plan.methods:
        if m in PERSONALISED:
            inproc = seconds_of(out, m, plan.headline, people, "in_process")
            command = seconds_of(out, m, plan.headline, people, "command")
            detail[m] = {"in_process": bootstrap_interval(inproc),
                         "in_process_median": float(np.median(inproc)) if inproc else None,
                         "command": bootstrap_interval(command)}
            if m == "encoder":  # train.py's own split of its in-process time
                detail[m]["photos_processing"] = bootstrap_interval(
                    seconds_of(out, m, plan.headline, people, "photos_processing"))
        elif m == "text_only":
            detail[m] = {"in_process": {"mean": 0.0, "note": "no personalisation"}, "command": {"mean": 0.0}}
    result["seconds_per_identity"] = {m: (detail[m]["in_process"]["mean"] if m in detail else None)
                                      for m in plan.methods if m != "ceiling"}
    result["seconds_per_identity_command"] = {m: detail[m]["command"]["mean"] for m in detail}
    result["seconds_per_identity_detail"] = detail
    for key in ("identity_similarity", "edit_success", "copy_paste"):
        result[key].setdefault("ceiling", None)
    result["intervals"] = {names.get(k, k): v for k, v in intervals.items()}
    result["paired"] = {pair: {names.get(k, k): v for k, v in rows.items()}
                        for pair, rows in paired_differences(out, plan, people, plan.headline).items()}
    result["by_photos"] = by_photos
    result["targets"] = targets(result)
    return result


# ----------------------------------------------------------------------------------------- the CLI
def finetune_setting(grid_json: Path | None, override: str | None, backbone: dict[str, str] | None = None):
    """(FinetuneConfig, where it came from): --finetune-setting mode,lr,steps, else the grid JSON's best,
    else the baseline's defaults (noted). With `backbone` (the world's weights_sha256 of BACKBONE_FILES), a grid
    tuned on other backbone files (its world_sha256), or one that does not record them, is said so in where it
    came from and on stderr."""
    import dataclasses

    from eval.finetune_baseline import DEFAULT_GRID_JSON, FinetuneConfig

    if override:
        mode, lr, steps = override.split(",")
        return FinetuneConfig(mode=mode, lr=float(lr), steps=int(steps)), f"--finetune-setting {override}"
    path = Path(grid_json or DEFAULT_GRID_JSON)
    if path.is_file():
        grid = json.loads(path.read_text())
        best, tuned_on = grid["best"], grid.get("world_sha256")
        cfg = dataclasses.replace(FinetuneConfig(), mode=best["mode"], lr=float(best["lr"]), steps=int(best["steps"]))
        if backbone is None or tuned_on == backbone:
            return cfg, f"best of {path}"
        why = "tuned on other backbone files" if tuned_on else "its backbone files are not recorded"
        print(f"note: the fine-tuning grid {path} may not suit this world's backbone: {why}", file=sys.stderr)
        return cfg, f"best of {path} ({why})"
    print(f"note: no fine-tuning grid at {path} (python -m eval.finetune_baseline grid): the baseline runs at its "
          f"default setting", file=sys.stderr)
    return FinetuneConfig(), "default (no grid JSON)"


def complete_people(evaluation: Evaluation, people: list[Person]) -> list[Person]:
    """The identities with every unit of the plan's methods done (--aggregate-only); none is an error."""
    complete = [p for p in people if not any(evaluation.todo(m, p) for m in evaluation.plan.methods)]
    methods = ",".join(evaluation.plan.methods)
    if not complete:
        raise UserError(f"eval.world --aggregate-only: no identity in {evaluation.out} has every unit of {methods}",
                        hint="run without --aggregate-only to score them, or name fewer --methods")
    print(f"[eval.world] --aggregate-only: {len(complete)} of {len(people)} identities have every unit of "
          f"{methods}; the JSON is theirs", flush=True)
    return complete


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.world", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="renderer seed of the test identities")
    p.add_argument("--identities", type=int, required=True, help="number of test identities")
    p.add_argument("--photos", default="3,10", help="photo counts (comma-separated, default 3,10)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/eval_world/seed<S>)")
    p.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder")
    p.add_argument("--encoder", type=Path, default=None, help="identity module (default <world>/faceid_encoder)")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    p.add_argument("--prompts", type=int, default=10, help="prompts of each layout per identity (default 10)")
    p.add_argument("--seeds", type=int, default=3, help="sampling seeds (default 3)")
    p.add_argument("--n", type=int, default=3, help="images per prompt (default 3)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--cfg", type=float, default=7.0, help="text guidance scale (default 7)")
    p.add_argument("--refs", type=int, default=5, help="reference renders per identity (default 5)")
    p.add_argument("--id-scale", type=float, default=1.0, help="the identity module's sample.py --id-scale (default 1)")
    p.add_argument("--id-guidance", type=float, default=None,
                   help="its sample.py --id-guidance (default: none, the text guidance scale)")
    p.add_argument("--id-start", type=id_start_value, default=None,
                   help="its sample.py --id-start: the identity only at noise levels t <= this (default: the "
                        "module's own, from its config.json `sampling` block, else 1: every step)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="its train.py --refine-steps: identity-token refinement on the photos (default 0)")
    p.add_argument("--photo-tokens", choices=("mean", "each"), default="mean",
                   help="its sample.py --photo-tokens: the mean embedding's tokens (default) or each photo's")
    p.add_argument("--headline-photos", type=int, default=None, help="photo count of the headline numbers")
    p.add_argument("--command-timing", type=int, default=3,
                   help="identities whose personalisation is also timed as a whole command (default 3; 0: none)")
    p.add_argument("--finetune-grid", type=Path, default=None,
                   help="grid JSON (default eval/results/finetune_grid.json)")
    p.add_argument("--finetune-setting", default=None, help="mode,lr,steps instead of the grid's best")
    p.add_argument("--workers", type=int, default=1,
                   help="split the identities over this many processes on the one device (a small world leaves "
                        "a GPU mostly idle); in-process personalisation times then share the device. Default 1")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # I/N: a worker's share (--workers)
    p.add_argument("--aggregate-only", action="store_true",
                   help="run nothing: the JSON from the identities whose units of --methods are all in the work "
                        "folder (a stopped run's partial figures)")
    p.add_argument("--no-progress", action="store_true")
    return p


def module_id_start(world: Path, encoder: Path | None) -> float:
    """The identity module's own --id-start (encoder.identity.sampling_defaults): what sample.py uses for it
    when the flag is not given, so that the evaluation measures what users get."""
    from encoder.identity import sampling_defaults

    folder = Path(encoder or Path(world) / "faceid_encoder")
    return sampling_defaults(folder if folder.is_dir() else None)["id_start"]


def provenance() -> dict:
    """Commit, dirty flag, device and command line (eval.bench.common.environment's fields)."""
    from eval.bench.common import environment

    env = environment("identity world")
    return {k: env[k] for k in ("git_commit", "git_dirty", "device", "torch")}


def main(argv: list[str] | None = None) -> int:
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import renderer_version, use_folder_version
    from models.atomic import write_json_atomic
    from models.device import pick_device
    from models.pipeline import folder_sampler_policy

    args = build_parser().parse_args(argv)
    use_folder_version(args.world)  # test identities drawn as the world's models saw renders
    argv_list = sys.argv[1:] if argv is None else list(argv)
    id_start = module_id_start(args.world, args.encoder) if args.id_start is None else args.id_start
    plan = Plan(seed=args.seed, identities=args.identities, photos=tuple(int(x) for x in args.photos.split(",")),
                methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), prompts=args.prompts,
                seeds=args.seeds, n=args.n, steps=args.steps, cfg=args.cfg, refs=args.refs,
                headline_photos=args.headline_photos, command_timing=args.command_timing,
                id_scale=args.id_scale, id_guidance=args.id_guidance, id_start=id_start,
                refine_steps=args.refine_steps,
                photo_tokens=args.photo_tokens)
    out = args.out or Path("runs/eval_world") / f"seed{plan.seed}"
    device = pick_device(args.device)
    t0 = time.perf_counter()
    people = prepare_data(plan, out, progress=not args.no_progress)
    hashes = weights_sha256(args.world, args.encoder, SCORED_FILES)
    check_scored_weights(out, plan.methods, hashes, write=not args.part)  # workers: the parent wrote it
    setting = finetune_setting(args.finetune_grid, args.finetune_setting,
                               {name: h for name, h in hashes.items() if name in BACKBONE_FILES})
    if args.part:  # a worker of --workers: its share of the identities, scored unit by unit; the parent aggregates
        i, n = parse_part(args.part)
        worker_plan = replace(plan, command_timing=0)
        Evaluation(worker_plan, out, args.world, device, args.encoder, setting, progress=False).run(people[i::n])
        return 0
    evaluation = Evaluation(plan, out, args.world, device, args.encoder, setting, progress=not args.no_progress)
    if args.aggregate_only:
        people = complete_people(evaluation, people)
    else:
        if args.workers > 1:
            t1 = time.perf_counter()
            run_workers("eval.world", argv_list, args.workers)
            evaluation.wall["workers"] = round(time.perf_counter() - t1, 2)
        evaluation.run(people)  # after workers: finds their units done; times whole commands alone on the device
    result = {"format": "synthworld", "version": 1, **aggregate(plan, out, people)}
    lo, _ = split_range(plan.split)
    if args.aggregate_only:
        result["aggregated_identities"] = [p.name for p in people]
    result.update({
        "counts": {"identities": len(people), "prompts": {"sim": plan.prompts, "edit": plan.prompts},
                   "images_per_prompt": plan.n, "seeds": plan.seeds, "photos": list(plan.photos),
                   "headline_photos": plan.headline, "references_per_identity": plan.refs,
                   "held_out_edit_prompts": sum(1 for p in people for q in p.prompts if q.get("held_out"))},
        "renderer_seed": plan.seed,
        "renderer": {"seed": plan.seed, "split": plan.split, "version": renderer_version(),
                     "identities": [lo, lo + plan.identities]},
        "sampling": {"steps": plan.steps, "cfg": plan.cfg, "seeds": plan.seeds, "id_scale": plan.id_scale,
                     "id_guidance": plan.id_guidance, "id_start": plan.id_start,
                     "id_start_from": "--id-start" if args.id_start is not None else "module's sampling block, else 1",
                     "refine_steps": plan.refine_steps,
                     "photo_tokens": plan.photo_tokens,
                     "sampler": folder_sampler_policy(args.world),
                     "seed_of_prompt": f"{SEED_BASE} + seed index x {2 * plan.prompts} prompts + prompt index"},
        "finetune_setting": {**setting[0].to_dict(), "source": setting[1]},
        "plan": asdict(plan), "world": str(args.world), "work_folder": str(out), "workers": args.workers,
        "wall_seconds_this_run": {**evaluation.wall, "total": round(time.perf_counter() - t0, 2)},
        "commands": {"evaluate": shlex.join(["python", "-m", "eval.world", *argv_list])},
        "world_sha256": hashes,
        **provenance()})
    if args.workers > 1:
        result["note"] = (f"in-process personalisation seconds were measured while {args.workers} worker processes "
                          "shared the device (upper bounds; seconds_per_identity and speedup_vs_finetune inherit "
                          "that); the whole-command timings ran alone after the workers")
    write_json_atomic(args.json, result, indent=1)
    head = {k: result[k] for k in ("identity_similarity", "edit_success", "copy_paste", "seconds_per_identity")}
    head["paired"] = {pair: {m: rows[m] for m in ("identity_similarity", "identity_similarity_found", "edit_success")}
                      for pair, rows in result["paired"].items()}
    print(json.dumps(head, indent=1))
    print(f"written to {args.json}")
    return 0


MODULE_FILE = "faceid_encoder/identity.safetensors"  # the identity module's weights (at --encoder when given)
# the world's files each method's images depend on (the ceiling's renders depend on none)
BACKBONE_FILES = WORLD_BACKBONE_FILES
METHOD_FILES = {"encoder": (*BACKBONE_FILES, MODULE_FILE), "text_only": BACKBONE_FILES,
                "finetune": BACKBONE_FILES, "ceiling": ()}
SCORED_FILES = METHOD_FILES["encoder"]  # every file some method depends on: the results JSON's world_sha256
WEIGHTS_RECORD = "weights.json"


def weights_sha256(world: Path, encoder: Path | None = None, names: tuple[str, ...] = SCORED_FILES) -> dict[str, str]:
    """{file: SHA-256} of the named world files an evaluation used (default the backbone's files and the identity
    module), so that a results JSON names the exact weights behind its numbers (the commit alone does not
    when weights are swapped in). Files that are absent are left out."""
    from models.paths import file_sha256

    module = Path(encoder or Path(world) / "faceid_encoder")
    paths = {name: module / "identity.safetensors" if name == MODULE_FILE else Path(world) / name for name in names}
    return {name: file_sha256(path) for name, path in paths.items() if path.is_file()}


def check_scored_weights(out: Path, methods, hashes: dict[str, str], write: bool = True) -> None:
    """Stop when the work folder's units of a method were scored with other weights than `hashes`
    (weights_sha256 of SCORED_FILES; <out>/weights.json, written by every run; a method without
    units takes the new weights): a unit's key holds the plan, not the weights, so a rerun would keep those
    units silently."""
    from models.atomic import write_json_atomic

    record_path = out / WEIGHTS_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for method in methods:
        now = {name: hashes.get(name) for name in METHOD_FILES[method]}
        scored = any((out / "scores" / method).rglob("*.json"))
        if scored and method in record and record[method] != now:
            changed = sorted(n for n in now if record[method].get(n) != now[n])
            raise UserError(f"eval.world: {out} holds {method} units scored with other weights ({', '.join(changed)} "
                            f"differ from {WEIGHTS_RECORD})",
                            hint=f"use another --out, or delete {out / 'scores' / method} to score them again")
        record[method] = now
    if write:
        write_json_atomic(record_path, record, indent=1)


# -------------------------------------------------------------------------------- fine-tuning grid
def run_workers(module: str, argv: list[str], workers: int) -> None:
    """`workers` processes of `python -m module argv --part I/N` at once on the one device (a small world
    leaves a GPU mostly idle), each its share; they write score units only, which the caller then finds
    done and aggregates. Each worker gets an equal share of the CPU threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    cmd = [sys.executable, "-m", module, *argv]
    procs = [subprocess.Popen([*cmd, "--part", f"{i}/{workers}"], env=env) for i in range(workers)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"{module} workers {failed} failed (their errors are printed above); "
                           "rerun the same command to resume")


def parse_part(part: str) -> tuple[int, int]:
    """--part I/N -> (I, N)."""
    i, n = (int(x) for x in part.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"--part {part}: expected I/N with 0 <= I < N")
    return i, n


def grid_search(args) -> dict:
    """`python -m eval.finetune_baseline grid`: the baseline's steps x LR x mode grid on validation
    identities, with text only on the same prompts; writes and returns the grid JSON."""
    import dataclasses

    from eval.finetune_baseline import GRID_LRS, FinetuneConfig, pick_best, sample_tuned
    from models.atomic import write_json_atomic
    from models.device import pick_device
    from models.pipeline import folder_sampler_policy

    steps = tuple(sorted(int(s) for s in str(args.steps).split(",")))
    modes = tuple(m for m in str(args.modes).split(",") if m)
    plan = Plan(seed=args.seed, identities=args.identities, photos=(args.photos,), methods=("text_only",),
                prompts=args.prompts, seeds=1, steps=args.sample_steps, split="val", command_timing=0)
    out = args.out or Path("runs/finetune_grid") / f"seed{plan.seed}"
    device = pick_device(args.device)
    runs = [(mode, lr) for mode in modes for lr in GRID_LRS[mode]]
    part = getattr(args, "part", None)
    people = prepare_data(plan, out, progress=False)
    ev = Evaluation(plan, out, args.world, device, None, (FinetuneConfig(), "grid"), progress=False)
    if part:  # a worker of --workers: its share of the runs, scored unit by unit; the parent aggregates
        i, n = parse_part(part)
        runs = runs[i::n]
    else:
        ev.run_text_only(people)
        if getattr(args, "workers", 1) > 1:
            run_workers("eval.finetune_baseline", args.argv, args.workers)
    k = args.photos
    names = {(mode, lr): {s: f"finetune_{mode}_lr{lr:g}_steps{s}" for s in steps} for mode, lr in runs}
    for (mode, lr), named in names.items():
        cfg = FinetuneConfig(mode=mode, lr=lr, steps=max(steps))
        for person in people:
            if all(ev.done(named[s], k, 0, person) for s in steps):
                continue
            for snap in ev.tuner.train(photo_dir(out, k, person.name), cfg, snapshots=steps,
                                       class_word=person.class_word):
                images = out / "images" / named[snap.step] / person.name
                sample_tuned(ev.pipe, snap.uvit, person.texts, person.class_word, images, ev.options(),
                             token=cfg.token)
                setting = dataclasses.replace(cfg, steps=snap.step).to_dict()
                ev.score_unit(named[snap.step], k, 0, person, images, {"setting": setting, "seconds": snap.seconds})
    if part:
        return {}
    rows = []
    for (mode, lr), named in names.items():
        for s in steps:
            ident = per_identity(out, named[s], k, people, 1, "all", "identity_similarity")
            edit = per_identity(out, named[s], k, people, 1, "edit", "edit_success")
            secs = [json.loads(unit_path(out, named[s], k, 0, p.name).read_text())["seconds"] for p in people]
            rows.append({"mode": mode, "lr": lr, "steps": s, "identity_similarity": _nanmean(ident),
                         "edit_success": _nanmean(edit),
                         "copy_paste": _nanmean(per_identity(out, named[s], k, people, 1, "all", "copy_paste")),
                         "clip_text_similarity": _nanmean(per_identity(out, named[s], k, people, 1, "edit",
                                                                       "clip_text")),
                         "seconds_per_identity": _nanmean(secs),
                         "intervals": {"identity_similarity": bootstrap_interval(ident),
                                       "edit_success": bootstrap_interval(edit)}})
    text_edit = _nanmean(per_identity(out, "text_only", k, people, 1, "edit", "edit_success")) or 0.0
    text_ident = _nanmean(per_identity(out, "text_only", k, people, 1, "all", "identity_similarity"))
    result = {"format": "finetune-grid", "version": 1, "grid": rows, "best": pick_best(rows, text_edit),
              "text_only": {"edit_success": text_edit, "identity_similarity": text_ident},
              "validation": {"seed": plan.seed, "split": "val", "identities": plan.identities, "photos": k,
                             "prompts": {"sim": plan.prompts, "edit": plan.prompts}, "images_per_prompt": plan.n,
                             "sampling_steps": plan.steps},
              "world": str(args.world), "world_sha256": weights_sha256(args.world, names=BACKBONE_FILES),
              "sampler": folder_sampler_policy(args.world),
              "commands": {"grid": shlex.join(["python", "-m", "eval.finetune_baseline", *args.argv])},
              **provenance()}
    write_json_atomic(args.json, result, indent=1)
    return result


if __name__ == "__main__":
    from models.errors import run_cli as run_user_cli

    sys.exit(run_user_cli(main))
