"""The competition's preliminary-round scorer (see shared/reference/competition.md, "Scoring").

Per generated image, against the identity's training photos:
  face     = max(0, max_j cos(face(img), face(ref_j))) over references with a detected face,
             0 when the image has no face;
  clip_img = max(0, max_j cos(CLIP(img), CLIP(ref_j))) over all references;
  text     = max(0, cos(CLIP(img), CLIP_text(prompt))) with the prompt as written.
A missing or unreadable image scores 0 on all three. Scores are averaged over the 3 images of a
prompt (`<prompt index>-<k:03>.jpg`, k = 0, 1, 2), then over the prompts of a task, then over
identities. Tasks come from prompt files: `<name>.json` (images in `outputs/<name>/`) gives
face / clip_img / text; `<name>_sim.json` and `<name>_edit.json` (images in `outputs/<name>_sim/`,
`outputs/<name>_edit/`, the layout scripts/sample.sh writes) give the later version's five numbers.

Faithful to the competition's script also where it is surprising: reference photos are the
`*.jpg` and `*.jpeg` files (lower case, as its glob), pixels are read as stored (no EXIF rotation;
`ScoreConfig.exif_transpose` turns it on), one face per image chosen as insightface's
``get(img, max_num=1)`` does (eval/competition_faces.py). Where the competition's script would
crash (an unreadable reference, no reference with a face) this scorer goes on and records a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps

from encoder.face_analysis import Face
from models.errors import UserError
from models.image_text import ImageTextModel

logger = logging.getLogger(__name__)

Role = Literal["plain", "sim", "edit"]
FIVE_NUMBERS = ("reproduction_face", "reproduction_clip_img", "editing_face", "editing_clip_img", "editing_text")
SCORES = ("face", "clip_img", "text")


class ScoreError(UserError, RuntimeError):
    """The inputs cannot be scored (missing folders, no references, bad prompt files)."""


class ImageUnreadable(Exception):
    """One image cannot be decoded; the scorer records it as 0 with its reason. An internal signal
    caught where it is raised, so not a UserError."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class FaceModel(Protocol):
    def face(self, img_rgb: np.ndarray) -> Face | None: ...


@dataclass(frozen=True)
class ScoreConfig:
    images_per_prompt: int = 3
    ref_suffixes: tuple[str, ...] = (".jpg", ".jpeg")  # matched case-sensitively, as the competition's glob
    image_suffix: str = ".jpg"
    exif_transpose: bool = False  # the competition read pixels as stored
    clip_batch: int = 32


# ------------------------------------------------------------------------------------------ images
def read_image(path: str | os.PathLike, exif_transpose: bool = False) -> Image.Image:
    """Decode an image fully into RGB. Raises ImageUnreadable('missing' | reason)."""
    path = Path(path)
    if not path.is_file():
        raise ImageUnreadable("missing")
    try:
        with Image.open(path) as img:
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img) or img
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types for truncated / foreign files
        raise ImageUnreadable(f"unreadable ({type(e).__name__}: {e})") from e


def image_path(output_dir: str | os.PathLike, prompt_index: int, k: int, suffix: str = ".jpg") -> Path:
    """`<output_dir>/<prompt index>-<k:03>.jpg`, the layout sample.py writes."""
    return Path(output_dir) / f"{prompt_index}-{k:03}{suffix}"


def _unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows L2-normalised, float64: [N, D] -> [N, D]."""
    a = np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _max0(sims: np.ndarray) -> float:
    """max(0, max(sims)); 0 for an empty set."""
    return max(0.0, float(np.max(sims))) if sims.size else 0.0


# -------------------------------------------------------------------------------------- references
@dataclass
class References:
    """One identity's training photos as the scorer sees them."""

    identity: str
    folder: Path
    files: list[str]  # every readable reference photo (CLIP references)
    clip: np.ndarray  # [R, D] L2-normalised CLIP image embeddings
    face_files: list[str]  # photos with a detected face (face references)
    face: np.ndarray  # [F, 512] L2-normalised ArcFace embeddings
    no_face: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # image files whose suffix the competition skipped

    def to_json(self) -> dict:
        return {"identity": self.identity, "folder": str(self.folder), "files": self.files,
                "face_files": self.face_files, "no_face": self.no_face,
                "unreadable": [{"file": f, "reason": r} for f, r in self.unreadable], "ignored": self.ignored}


# ------------------------------------------------------------------------------------------ scores
@dataclass
class ImageScore:
    file: str
    status: str  # "ok", "missing" or "unreadable (...)"
    face: float = 0.0
    clip_img: float = 0.0
    text: float = 0.0
    face_found: bool = False
    face_size: float | None = None  # shorter side of the face box, pixels
    face_sims: np.ndarray | None = None  # [F] cosine to each face reference
    face_embedding: np.ndarray | None = None  # [512], kept in memory for metrics, not written
    clip_embedding: np.ndarray | None = None  # [D]

    def to_json(self) -> dict:
        return {"file": self.file, "status": self.status, "face": self.face, "clip_img": self.clip_img,
                "text": self.text, "face_found": self.face_found, "face_size": self.face_size,
                "face_sims": None if self.face_sims is None else [float(s) for s in self.face_sims]}


@dataclass
class PromptScore:
    index: int
    prompt: str
    images: list[ImageScore]

    def mean(self, key: str) -> float:
        return float(np.mean([getattr(im, key) for im in self.images]))

    def to_json(self) -> dict:
        return {"index": self.index, "prompt": self.prompt, **{k: self.mean(k) for k in SCORES},
                "faces_found": sum(im.face_found for im in self.images),
                "images": [im.to_json() for im in self.images]}


@dataclass
class TaskScore:
    task: str  # prompt file stem: boy1, boy1_sim, boy1_edit
    identity: str
    role: Role
    prompt_file: str
    output_dir: str
    prompts: list[PromptScore]

    def mean(self, key: str) -> float:
        return float(np.mean([p.mean(key) for p in self.prompts]))

    @property
    def images(self) -> list[ImageScore]:
        return [im for p in self.prompts for im in p.images]

    def to_json(self) -> dict:
        return {"task": self.task, "identity": self.identity, "role": self.role,
                "prompt_file": self.prompt_file, "output_dir": self.output_dir,
                **{k: self.mean(k) for k in SCORES}, "prompts": [p.to_json() for p in self.prompts]}


@dataclass
class ScoreReport:
    tasks: list[TaskScore]
    references: dict[str, References]
    config: ScoreConfig
    models: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        """{"plain": face/clip_img/text} and/or {"five": the five numbers}, each a mean over identities."""
        out: dict[str, dict[str, float]] = {}
        plain = [t for t in self.tasks if t.role == "plain"]
        if plain:
            out["plain"] = {k: float(np.mean([t.mean(k) for t in plain])) for k in SCORES}
            out["plain"]["identities"] = len(plain)
        sim = [t for t in self.tasks if t.role == "sim"]
        edit = [t for t in self.tasks if t.role == "edit"]
        if sim or edit:
            five: dict[str, float] = {}
            if sim:
                five["reproduction_face"] = float(np.mean([t.mean("face") for t in sim]))
                five["reproduction_clip_img"] = float(np.mean([t.mean("clip_img") for t in sim]))
            if edit:
                five["editing_face"] = float(np.mean([t.mean("face") for t in edit]))
                five["editing_clip_img"] = float(np.mean([t.mean("clip_img") for t in edit]))
                five["editing_text"] = float(np.mean([t.mean("text") for t in edit]))
            five["identities_sim"], five["identities_edit"] = len(sim), len(edit)
            out["five"] = five
        return out

    def to_json(self) -> dict:
        return {"format": "unidiffuser-faceid-score", "version": 1, "summary": self.summary(),
                "config": {"images_per_prompt": self.config.images_per_prompt,
                           "ref_suffixes": list(self.config.ref_suffixes),
                           "exif_transpose": self.config.exif_transpose},
                "models": self.models, "warnings": self.warnings,
                "references": {k: r.to_json() for k, r in self.references.items()},
                "tasks": [t.to_json() for t in self.tasks]}


# ---------------------------------------------------------------------------------- prompt files
def parse_task(prompt_file: str | os.PathLike) -> tuple[str, str, Role]:
    """`boy1.json` -> (boy1, boy1, plain); `boy1_sim.json` -> (boy1_sim, boy1, sim); `_edit` alike."""
    stem = Path(prompt_file).stem
    for role in ("sim", "edit"):
        if stem.endswith(f"_{role}") and len(stem) > len(role) + 1:
            return stem, stem[: -len(role) - 1], role  # type: ignore[return-value]
    return stem, stem, "plain"


def load_prompt_list(path: str | os.PathLike) -> list[str]:
    """A JSON list of non-empty strings (the prompts exactly as written), checked as sample.py
    checks its prompt file; ScoreError naming what is wrong otherwise."""
    from personalize.prompts import PromptFileError, load_prompts

    try:
        return load_prompts(path)
    except PromptFileError as e:
        raise ScoreError(str(e)) from e


# ------------------------------------------------------------------------------------------ scorer
class CompetitionScorer:
    """faces: the competition's face model (CompetitionFaces); clip: the image-text model of CLIP-I and
    CLIP-T (models.image_text: OpenAI's ViT-B/32 for real, the world-CLIP in the identity world)."""

    def __init__(self, faces: FaceModel, clip: ImageTextModel, config: ScoreConfig = ScoreConfig()):
        self.faces = faces
        self.clip = clip
        self.config = config

    @classmethod
    def from_weights(cls, *, clip_path: str | os.PathLike | None = None,
                     face_pack: str | os.PathLike | None = None, weights_root: str | os.PathLike | None = None,
                     device: str | torch.device | None = None, providers: Sequence[Any] | None = None,
                     face_config: Any = None, config: ScoreConfig = ScoreConfig()
                     ) -> tuple[CompetitionScorer, dict[str, Any]]:
        """Load the image-text model (OpenAI CLIP ViT-B/32, or the world-CLIP of the identity world's
        folder; models.image_text) and the face pack from local files (WeightsError naming the missing
        file otherwise). face_config: a CompetitionFaceConfig (default: the competition's).
        Returns (scorer, {"clip", "face_pack", "face_pack_note"})."""
        from eval.competition_faces import CompetitionFaceConfig, CompetitionFaces, find_face_pack
        from models.image_text import load_image_text_model
        from models.paths import find_weights

        clip_file = find_weights("clip_image", clip_path, root=weights_root)
        pack, note = find_face_pack(face_pack, root=weights_root)
        clip, _ = load_image_text_model(clip_file, device=device)
        faces = CompetitionFaces.from_pack(pack, providers=providers, config=face_config or CompetitionFaceConfig())
        info = {"clip": str(clip_file), "face_pack": str(pack), "face_pack_note": note}
        return cls(faces, clip, config), info

    # ------------------------------------------------------------------------------- embeddings
    def _clip_images(self, images: list[Image.Image]) -> np.ndarray:
        """[N] PIL -> [N, D] unit vectors (empty list -> [0, 0])."""
        if not images:
            return np.zeros((0, 0))
        chunks = [self.clip.embed_images(images[i:i + self.config.clip_batch])
                  for i in range(0, len(images), self.config.clip_batch)]
        return _unit(torch.cat(chunks))

    def references(self, folder: str | os.PathLike, identity: str | None = None) -> References:
        """Embed an identity's training photos (CLIP: all readable; face: those with a face)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ScoreError(f"training photos folder {folder} does not exist (expected train_data/<name>/)")
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        refs = [p for p in entries if p.suffix in self.config.ref_suffixes]
        ignored = [p.name for p in entries if p not in refs and p.suffix.lower() in
                   {".jpg", ".jpeg", ".png", ".webp", ".bmp"}]
        images, files, unreadable = [], [], []
        for p in refs:
            try:
                images.append(read_image(p, self.config.exif_transpose))
                files.append(p.name)
            except ImageUnreadable as e:
                unreadable.append((p.name, e.reason))
        if not images:
            raise ScoreError(f"no readable reference photo ({' or '.join(self.config.ref_suffixes)}) in {folder}"
                             + (f"; ignored: {', '.join(ignored)}" if ignored else ""))
        clip = self._clip_images(images)
        face_files, face_embs, no_face = [], [], []
        for name, img in zip(files, images):
            face = self.faces.face(np.asarray(img))
            if face is None:
                no_face.append(name)
            else:
                face_files.append(name)
                face_embs.append(face.embedding)
        face = _unit(np.stack(face_embs)) if face_embs else np.zeros((0, 512))
        return References(identity=identity or folder.name, folder=folder, files=files, clip=clip,
                          face_files=face_files, face=face, no_face=no_face, unreadable=unreadable,
                          ignored=ignored)

    # ---------------------------------------------------------------------------------- scoring
    def score_images(self, paths: Sequence[str | os.PathLike], prompts: Sequence[str], refs: References,
                     progress: Any = None) -> list[ImageScore]:
        """Score images against `refs`, image i against prompts[i]. progress: a tqdm to update, or None."""
        if len(paths) != len(prompts):
            raise ValueError(f"{len(paths)} images but {len(prompts)} prompts")
        results: list[ImageScore] = []
        loaded: list[tuple[int, Image.Image]] = []
        for i, p in enumerate(paths):
            try:
                img = read_image(p, self.config.exif_transpose)
                results.append(ImageScore(file=str(p), status="ok"))
                loaded.append((i, img))
            except ImageUnreadable as e:
                results.append(ImageScore(file=str(p), status=e.reason))
        img_emb = self._clip_images_robust([img for _, img in loaded])  # [N, D], NaN rows failed
        texts = sorted({prompts[i] for i, _ in loaded})
        txt_emb = dict(zip(texts, _unit(self.clip.embed_texts(texts)))) if texts else {}
        for row, (i, img) in enumerate(loaded):
            try:
                self._fill(results[i], img, img_emb[row], txt_emb[prompts[i]], refs)
            except Exception as e:  # the competition's script scored any failure as 0 on all three
                logger.warning("%s: scoring failed (%s: %s); scored 0", paths[i], type(e).__name__, e)
                results[i] = ImageScore(file=str(paths[i]), status=f"error ({type(e).__name__}: {e})")
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.update(len(paths) - len(loaded))
        return results

    def _clip_images_robust(self, images: list[Image.Image]) -> np.ndarray:
        """Like _clip_images, but an image that fails alone gets a NaN row instead of failing all."""
        try:
            return self._clip_images(images)
        except Exception:
            rows = []
            for img in images:
                try:
                    rows.append(self._clip_images([img])[0])
                except Exception as e:
                    logger.warning("CLIP failed on an image (%s: %s)", type(e).__name__, e)
                    rows.append(None)
            dim = next((len(r) for r in rows if r is not None), 1)
            return np.stack([np.full(dim, np.nan) if r is None else r for r in rows])

    def _fill(self, r: ImageScore, img: Image.Image, e: np.ndarray, t: np.ndarray, refs: References) -> None:
        """Compute one readable image's three scores into r. e: [D] unit CLIP image, t: [D] unit text."""
        if not np.all(np.isfinite(e)):
            raise RuntimeError("CLIP image embedding failed")
        face = self.faces.face(np.asarray(img))
        r.clip_embedding = e.astype(np.float32)
        r.clip_img = _max0(refs.clip @ e)
        r.text = max(0.0, float(e @ t))
        if face is not None:
            f = _unit(face.embedding)[0]
            r.face_found = True
            r.face_size = face.size
            r.face_embedding = f.astype(np.float32)
            r.face_sims = refs.face @ f
            r.face = _max0(r.face_sims)

    def score_task(self, output_dir: str | os.PathLike, prompts: Sequence[str], refs: References, *,
                   task: str | None = None, role: Role = "plain", prompt_file: str = "",
                   progress: bool = False) -> TaskScore:
        """Score `<output_dir>/<i>-<k:03>.jpg` for every prompt i and k < images_per_prompt."""
        output_dir = Path(output_dir)
        n = self.config.images_per_prompt
        paths = [image_path(output_dir, i, k, self.config.image_suffix) for i in range(len(prompts))
                 for k in range(n)]
        per_image_prompts = [p for p in prompts for _ in range(n)]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), desc=task or output_dir.name, unit="img", leave=False)
        try:
            scores = self.score_images(paths, per_image_prompts, refs, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        prompt_scores = [PromptScore(index=i, prompt=p, images=scores[i * n:(i + 1) * n])
                         for i, p in enumerate(prompts)]
        return TaskScore(task=task or output_dir.name, identity=refs.identity, role=role,
                         prompt_file=prompt_file, output_dir=str(output_dir), prompts=prompt_scores)

    def score_tree(self, outputs: str | os.PathLike, prompts_dir: str | os.PathLike,
                   train_data: str | os.PathLike, *, tasks: Sequence[str] | None = None,
                   allow_missing: bool = False, progress: bool = True) -> ScoreReport:
        """Every prompt file `<prompts_dir>/<task>.json` against `<outputs>/<task>/` and
        `<train_data>/<identity>/`. tasks: only these stems. allow_missing: a missing output folder
        scores 0 (as its missing images would) instead of stopping."""
        outputs, prompts_dir, train_data = Path(outputs), Path(prompts_dir), Path(train_data)
        if not prompts_dir.is_dir():
            raise ScoreError(f"prompt folder {prompts_dir} does not exist")
        files = sorted(prompts_dir.glob("*.json"))
        if tasks:
            wanted = set(tasks)
            files = [f for f in files if f.stem in wanted]
            if missing := wanted - {f.stem for f in files}:
                raise ScoreError(f"no prompt file for task(s) {sorted(missing)} in {prompts_dir}")
        if not files:
            raise ScoreError(f"no <name>.json prompt files in {prompts_dir}")
        warnings: list[str] = []
        plan = []
        for f in files:
            task, identity, role = parse_task(f)
            out_dir = outputs / task
            if not out_dir.is_dir():
                msg = f"output folder {out_dir} for prompt file {f.name} is missing"
                if not allow_missing:
                    raise ScoreError(f"{msg}; generate it (scripts/sample.sh writes outputs/<task>/) or pass "
                                     "--allow-missing to score its images as 0")
                warnings.append(msg + ": scored 0")
            if not (train_data / identity).is_dir():
                raise ScoreError(f"training photos for {f.name} not found: expected the folder "
                                 f"{train_data / identity}")
            plan.append((f, task, identity, role, out_dir))
        references: dict[str, References] = {}
        results: list[TaskScore] = []
        for f, task, identity, role, out_dir in plan:
            if identity not in references:
                refs = self.references(train_data / identity, identity)
                references[identity] = refs
                warnings += _reference_warnings(refs)
            prompts = load_prompt_list(f)
            results.append(self.score_task(out_dir, prompts, references[identity], task=task, role=role,
                                           prompt_file=str(f), progress=progress))
            if progress:
                t = results[-1]
                print(f"{task}: face {t.mean('face'):.4f}  clip_img {t.mean('clip_img'):.4f}  "
                      f"text {t.mean('text'):.4f}", flush=True)
        for t in results:
            bad = [im for im in t.images if im.status != "ok"]
            if bad:
                warnings.append(f"{t.task}: {len(bad)} of {len(t.images)} images missing or unreadable "
                                f"(scored 0), e.g. {Path(bad[0].file).name}: {bad[0].status}")
        return ScoreReport(tasks=results, references=references, config=self.config, warnings=warnings)


def _reference_warnings(refs: References) -> list[str]:
    out = []
    if refs.unreadable:
        out.append(f"{refs.identity}: unreadable reference photos skipped: "
                   + ", ".join(f"{f} ({r})" for f, r in refs.unreadable))
    if refs.ignored:
        out.append(f"{refs.identity}: files ignored (the competition reads only *.jpg and *.jpeg): "
                   + ", ".join(refs.ignored))
    if refs.no_face:
        out.append(f"{refs.identity}: no face detected in reference(s) {', '.join(refs.no_face)} "
                   "(dropped from the face references)")
    if not refs.face_files:
        out.append(f"{refs.identity}: no reference photo has a detected face: every face score is 0")
    return out
