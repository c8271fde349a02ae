"""The competition's final-round score (see shared/reference/competition.md, "Scoring (final round)").

Per item (one person: reference photos, a class word, several captions) and caption, 4 generated
images:
  face      = mean over the images with a detected face of (mean over the item's references with a
              face of cos(face(img), face(ref)));
  fidelity  = mean over the images of the prompt-fidelity score (ImageReward; eval/prompt_fidelity.py);
  each is min-max normalised per caption between given bounds, lower = the original UniDiffuser's
  outputs, upper = the reference photos: (x - low) / (high - low).
A caption counts only if at least 2 images have a face and both normalised scores exceed 0.1;
final = 2.5 x sum(normalised face) + sum(normalised fidelity) over the counted captions of all items.
A caption with a missing or unreadable image, or with high == low bounds, does not count.

    python -m eval.final_round --items items/ --generated generated/ --bounds bounds/ --json final.json
    python -m eval.final_round --items items/ --baseline baseline/ --make-bounds bounds/   # measure bounds

Files (one JSON per item in each folder, matched by "id"; relative paths are relative to the JSON):
  items:     {"id", "class_word", "references": [paths], "captions": [...]}
             (the keys "source_group": [{"path": ...}] and "caption_list" are read too)
  generated: {"id", "images": [{"prompt": caption, "paths": [4 paths]}]}  (baseline: the same format)
  bounds:    {"id", "images": [{"prompt", "min_face_sim", "max_face_sim", "min_image_reward",
             "max_image_reward", "min_text_sim", "max_text_sim"}]}  (the fidelity's pair is needed)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval.competition_scorer import FaceModel, ImageUnreadable, ScoreError, read_image
from eval.prompt_fidelity import PromptFidelity
from models.device import pick_device
from models.errors import run_cli

BOUND_KEYS = {"image_reward": ("min_image_reward", "max_image_reward"),
              "clip_text": ("min_text_sim", "max_text_sim")}


@dataclass(frozen=True)
class FinalRoundConfig:
    face_weight: float = 2.5
    threshold: float = 0.1  # both normalised scores must exceed it
    min_faces: int = 2  # images of a caption with a detected face
    images_per_caption: int = 4


@dataclass(frozen=True)
class Bounds:
    """One caption's normalisation range: low = original UniDiffuser outputs, high = reference photos."""

    face_min: float
    face_max: float
    fidelity_min: float
    fidelity_max: float


def normalise(value: float, low: float, high: float) -> float:
    """(value - low) / (high - low); NaN when the range is empty or a value is missing."""
    if value is None or not np.isfinite([value, low, high]).all() or high == low:
        return float("nan")
    return float((value - low) / (high - low))


@dataclass
class CaptionScore:
    item: str
    caption: str
    face_scores: list[float | None]  # per image: mean cosine to the references, None = no face
    fidelity_scores: list[float | None]  # per image, None = missing / unreadable
    bounds: Bounds
    statuses: list[str] = field(default_factory=list)
    n_faces: int = 0
    face: float = float("nan")  # mean over images with a face
    fidelity: float = float("nan")
    face_norm: float = float("nan")
    fidelity_norm: float = float("nan")
    counted: bool = False
    reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["bounds"] = asdict(self.bounds)
        return d


def caption_score(item: str, caption: str, face_scores: Sequence[float | None],
                  fidelity_scores: Sequence[float | None], bounds: Bounds,
                  config: FinalRoundConfig = FinalRoundConfig(), statuses: Sequence[str] | None = None
                  ) -> CaptionScore:
    """The per-caption arithmetic: means, normalisation and the counting rule."""
    s = CaptionScore(item, caption, list(face_scores), list(fidelity_scores), bounds,
                     list(statuses or ["ok"] * len(face_scores)))
    faces = [f for f in face_scores if f is not None]
    fids = [f for f in fidelity_scores if f is not None]
    s.n_faces = len(faces)
    s.face = float(np.mean(faces)) if faces else float("nan")
    s.fidelity = float(np.mean(fids)) if fids else float("nan")
    s.face_norm = normalise(s.face, bounds.face_min, bounds.face_max)
    s.fidelity_norm = normalise(s.fidelity, bounds.fidelity_min, bounds.fidelity_max)
    bad = sum(st != "ok" for st in s.statuses)
    if len(face_scores) < config.images_per_caption or bad:
        s.reason = (f"{bad} of {len(face_scores)} images missing or unreadable" if bad else
                    f"{len(face_scores)} images, {config.images_per_caption} needed")
    elif s.n_faces < config.min_faces:
        s.reason = f"{s.n_faces} faces detected, {config.min_faces} needed"
    elif not np.isfinite(s.face_norm) or not np.isfinite(s.fidelity_norm):
        s.reason = "empty normalisation range (high == low) or a missing bound"
    elif s.face_norm <= config.threshold:
        s.reason = f"normalised face {s.face_norm:.3f} <= {config.threshold:g}"
    elif s.fidelity_norm <= config.threshold:
        s.reason = f"normalised prompt fidelity {s.fidelity_norm:.3f} <= {config.threshold:g}"
    else:
        s.counted = True
    return s


def final_total(captions: Sequence[CaptionScore], config: FinalRoundConfig = FinalRoundConfig()) -> dict:
    """{"face_sum", "fidelity_sum", "final" = face_weight x face_sum + fidelity_sum, "counted", "captions"}."""
    counted = [c for c in captions if c.counted]
    face_sum = float(sum(c.face_norm for c in counted))
    fid_sum = float(sum(c.fidelity_norm for c in counted))
    return {"face_sum": face_sum, "fidelity_sum": fid_sum, "final": config.face_weight * face_sum + fid_sum,
            "counted": len(counted), "captions": len(captions)}


# ------------------------------------------------------------------------------------------ items
@dataclass
class FinalItem:
    id: str
    references: list[Path]
    captions: list[str]
    class_word: str = ""


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def load_item(path: str | os.PathLike) -> FinalItem:
    path = Path(path)
    d = _read_json(path)
    refs = d.get("references") or [g["path"] for g in d.get("source_group", [])]
    caps = d.get("captions") or d.get("caption_list")
    if "id" not in d or not refs or not caps:
        raise ScoreError(f"item file {path} needs 'id', 'references' (or 'source_group') and 'captions' "
                         "(or 'caption_list')")
    return FinalItem(str(d["id"]), [_resolve(path.parent, r) for r in refs], list(caps),
                     str(d.get("class_word", d.get("class", ""))))


def load_generated(path: str | os.PathLike) -> tuple[str, dict[str, list[Path]]]:
    """(item id, caption -> image paths)."""
    path = Path(path)
    d = _read_json(path)
    try:
        return str(d["id"]), {e["prompt"]: [_resolve(path.parent, p) for p in e["paths"]] for e in d["images"]}
    except (KeyError, TypeError) as e:
        raise ScoreError(f"generated-images file {path} needs 'id' and 'images': [{{'prompt', 'paths'}}] ({e})") from e


def load_bounds(path: str | os.PathLike, fidelity: str) -> tuple[str, dict[str, Bounds]]:
    """(item id, caption -> Bounds) reading the fidelity's pair of keys (see BOUND_KEYS)."""
    path = Path(path)
    d = _read_json(path)
    lo, hi = BOUND_KEYS[fidelity]
    try:
        return str(d["id"]), {e["prompt"]: Bounds(float(e["min_face_sim"]), float(e["max_face_sim"]),
                                                  float(e[lo]), float(e[hi])) for e in d["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ScoreError(f"bounds file {path} needs per caption min/max_face_sim and {lo}/{hi} ({e})") from e


def _item_entry(path: Path) -> tuple[str, FinalItem]:
    item = load_item(path)
    return item.id, item


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScoreError(f"cannot read JSON file {path}: {e}") from e
    if not isinstance(d, dict):
        raise ScoreError(f"{path} must hold a JSON object")
    return d


def _by_id(folder: str | os.PathLike, loader) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ScoreError(f"folder {folder} does not exist")
    out = {}
    for f in sorted(folder.glob("*.json")):
        key, value = loader(f)
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------- scorer
class FinalRoundScorer:
    """faces: the competition's face model; fidelity: ImageReward or a labelled stand-in."""

    def __init__(self, faces: FaceModel, fidelity: PromptFidelity, config: FinalRoundConfig = FinalRoundConfig()):
        self.faces = faces
        self.fidelity = fidelity
        self.config = config

    def _face(self, path: Path) -> np.ndarray | None:
        face = self.faces.face(np.asarray(read_image(path)))
        if face is None:
            return None
        e = np.asarray(face.embedding, dtype=np.float64).reshape(-1)
        return e / np.linalg.norm(e)

    def reference_faces(self, paths: Sequence[Path]) -> np.ndarray:
        """[F, 512] unit embeddings of the references with a face (unreadable ones skipped)."""
        embs = []
        for p in paths:
            try:
                e = self._face(p)
            except ImageUnreadable:
                continue
            if e is not None:
                embs.append(e)
        return np.stack(embs) if embs else np.zeros((0, 512))

    def image_scores(self, caption: str, paths: Sequence[Path], ref_faces: np.ndarray
                     ) -> tuple[list[float | None], list[float | None], list[str]]:
        """Per image: face (mean cosine to the references, None = no face), fidelity, status."""
        faces: list[float | None] = []
        statuses, readable = [], []
        for p in paths:
            try:
                e = self._face(p)
            except ImageUnreadable as err:
                faces.append(None)
                statuses.append(err.reason)
                continue
            statuses.append("ok")
            readable.append(p)
            faces.append(None if e is None or not len(ref_faces) else float(np.mean(ref_faces @ e)))
        scores = iter(self.fidelity(caption, readable) if readable else [])
        fids = [next(scores) if st == "ok" else None for st in statuses]
        return faces, fids, statuses

    def score_item(self, item: FinalItem, generated: dict[str, list[Path]], bounds: dict[str, Bounds]
                   ) -> list[CaptionScore]:
        ref_faces = self.reference_faces(item.references)
        out = []
        for caption in item.captions:
            if caption not in bounds:
                raise ScoreError(f"item {item.id}: no bounds for caption {caption!r}")
            paths = generated.get(caption, [])
            faces, fids, statuses = self.image_scores(caption, paths, ref_faces)
            out.append(caption_score(item.id, caption, faces, fids, bounds[caption], self.config, statuses))
        return out

    def measure_bounds(self, item: FinalItem, baseline: dict[str, list[Path]]) -> dict[str, dict[str, float]]:
        """Bounds per caption: low = the baseline (original UniDiffuser) images' face and fidelity
        means, high = the reference photos' (face: each reference against the other references;
        fidelity: the references scored with the caption). Keys as in a bounds file."""
        ref_faces = self.reference_faces(item.references)
        if len(ref_faces) >= 2:
            sims = ref_faces @ ref_faces.T
            n = len(ref_faces)
            face_high = float(np.mean((sims.sum(axis=1) - np.diag(sims)) / (n - 1)))
        else:
            face_high = float("nan")
        readable_refs = [p for p in item.references if _readable(p)]
        lo_key, hi_key = BOUND_KEYS.get(self.fidelity.name, (f"min_{self.fidelity.name}", f"max_{self.fidelity.name}"))
        out = {}
        for caption in item.captions:
            faces, fids, _ = self.image_scores(caption, baseline.get(caption, []), ref_faces)
            f_ok = [f for f in faces if f is not None]
            d_ok = [f for f in fids if f is not None]
            ref_fid = self.fidelity(caption, readable_refs) if readable_refs else []
            out[caption] = {"min_face_sim": float(np.mean(f_ok)) if f_ok else float("nan"),
                            "max_face_sim": face_high,
                            lo_key: float(np.mean(d_ok)) if d_ok else float("nan"),
                            hi_key: float(np.mean(ref_fid)) if ref_fid else float("nan")}
        return out


def _readable(path: Path) -> bool:
    try:
        read_image(path)
        return True
    except ImageUnreadable:
        return False


# -------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.final_round", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", required=True, help="folder of item JSONs (references, captions)")
    p.add_argument("--generated", help="folder of generated-images JSONs to score")
    p.add_argument("--bounds", help="folder of bounds JSONs (per caption min/max)")
    p.add_argument("--baseline", help="with --make-bounds: folder of the original UniDiffuser's image JSONs")
    p.add_argument("--make-bounds", metavar="DIR", help="measure bounds from --baseline and the references, "
                                                         "write one JSON per item into DIR, and stop")
    p.add_argument("--json", help="write the full report here (atomically)")
    p.add_argument("--fidelity", default="auto", choices=["auto", "image_reward", "clip_text"],
                   help="prompt fidelity: ImageReward (auto: if available, else the CLIP text score)")
    p.add_argument("--image-reward", help="folder with ImageReward.pt and med_config.json "
                                          "(default: <weights>/ImageReward)")
    p.add_argument("--clip", help="OpenAI CLIP ViT-B/32 weights file (for the clip_text stand-in)")
    p.add_argument("--face-pack", help="insightface buffalo_l folder (default: <weights>/buffalo_l)")
    p.add_argument("--weights", help="weights folder (default: $UNIDIFFUSER_WEIGHTS or checkpoints/)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from eval.competition_faces import CompetitionFaces, find_face_pack
    from eval.prompt_fidelity import load_prompt_fidelity
    from eval.tables import format_table
    from models.atomic import write_json_atomic
    from models.image_text import load_image_text_model
    from models.paths import WeightsError, output_dir, output_file

    if not args.make_bounds and not (args.generated and args.bounds):
        raise ScoreError("pass --generated and --bounds to score, or --baseline with --make-bounds to measure bounds")
    if args.make_bounds and not args.baseline:
        raise ScoreError("--make-bounds needs --baseline (the original UniDiffuser's images)")
    if args.make_bounds:
        output_dir(args.make_bounds, "--make-bounds", create=False)
    if args.json:
        output_file(args.json, "--json")
    device = pick_device(args.device)
    clip = None
    if args.fidelity != "image_reward":
        try:
            clip, _ = load_image_text_model(args.clip, root=args.weights, device=device)
        except WeightsError:
            if args.fidelity == "clip_text":
                raise
    fidelity, note = load_prompt_fidelity(args.fidelity, image_reward=args.image_reward,
                                          weights_root=args.weights, clip=clip, device=device)
    if note:
        print(f"note: {note}", file=sys.stderr)
    pack, pack_note = find_face_pack(args.face_pack, root=args.weights)
    if pack_note:
        print(f"note: {pack_note}", file=sys.stderr)
    faces = CompetitionFaces.from_pack(pack, providers=None if device.type == "cuda" else ["CPUExecutionProvider"])
    scorer = FinalRoundScorer(faces, fidelity)
    items = _by_id(args.items, _item_entry)

    if args.make_bounds:
        baseline = _by_id(args.baseline, load_generated)
        for item_id, item in items.items():
            if item_id not in baseline:
                raise ScoreError(f"no baseline images for item {item_id} in {args.baseline}")
            b = scorer.measure_bounds(item, baseline[item_id])
            write_json_atomic(Path(args.make_bounds) / f"{item_id}.json",
                              {"id": item_id, "fidelity": fidelity.name,
                               "images": [{"prompt": c, **v} for c, v in b.items()]})
        print(f"bounds for {len(items)} items written to {args.make_bounds} (fidelity: {fidelity.label})")
        return 0

    generated = _by_id(args.generated, load_generated)
    bounds = _by_id(args.bounds, lambda f: load_bounds(f, fidelity.name))
    captions: list[CaptionScore] = []
    for item_id, item in items.items():
        if item_id not in bounds:
            raise ScoreError(f"no bounds for item {item_id} in {args.bounds}")
        captions += scorer.score_item(item, generated.get(item_id, {}), bounds[item_id])
    total = final_total(captions, scorer.config)
    rows = [(c.item, c.caption[:40], c.n_faces, c.face, c.face_norm, c.fidelity, c.fidelity_norm,
             "yes" if c.counted else c.reason) for c in captions]
    print(format_table(rows, ["item", "caption", "faces", "face", "face_n", "fidelity", "fid_n", "counted"]))
    print(f"\nprompt fidelity: {fidelity.label}")
    print(f"final = {scorer.config.face_weight:g} x {total['face_sum']:.4f} + {total['fidelity_sum']:.4f} = "
          f"{total['final']:.4f}  ({total['counted']} of {total['captions']} captions counted)")
    if args.json:
        write_json_atomic(args.json, {"format": "unidiffuser-faceid-final-round", "version": 1, "total": total,
                                      "fidelity": {"name": fidelity.name, "label": fidelity.label, "note": note},
                                      "face_pack": str(pack), "config": asdict(scorer.config),
                                      "captions": [c.to_json() for c in captions]})
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
