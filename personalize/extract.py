"""Photos of one person -> identity record (what `train.py` does before any refinement)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from models.errors import UserError
from personalize.record import IdentityRecord, PhotoInfo

_CLASS_RE = re.compile(r"(?<![a-z])(boy|girl|woman|man)(?![a-z])", re.IGNORECASE)  # boy1, girl_2, not "germany"


class NoUsablePhotos(UserError, RuntimeError):
    """Not one photo of the folder gave a usable face; nothing was written."""


def class_word_for(folder: Path, genders: list[str | None]) -> tuple[str, str]:
    """(class word, where it came from): the folder name first, then the face pack's estimate."""
    m = _CLASS_RE.search(folder.name)
    if m:
        return m.group(1).lower(), "folder name"
    votes = Counter(g for g in genders if g)
    if votes:
        gender = votes.most_common(1)[0][0]
        return ("man" if gender == "male" else "woman"), "face pack gender estimate"
    return "person", "default"


def extract_identity(photo_dir: str | Path, analyzer, *, progress: bool = True) -> IdentityRecord:
    """Detect, align and embed every photo; raises NoUsablePhotos when none is usable."""
    photo_dir = Path(photo_dir)
    result = analyzer.analyze_folder(photo_dir, progress=progress)
    skipped = [{"file": str(p), "reason": reason} for p, reason in result.skipped]
    if not result.faces:
        detail = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in skipped) or "the folder has no images"
        raise NoUsablePhotos(f"no usable face photo in {photo_dir} ({detail}). Nothing was written. "
                             "Use clear, front-facing photos of one person (jpg, png, webp, gif or any format "
                             "Pillow reads).")
    photos = [PhotoInfo(file=str(p), box=[float(v) for v in f.box], det_score=float(f.det_score),
                        n_faces=int(f.n_faces), gender=f.gender,
                        age=None if f.age is None else float(f.age)) for p, f in result.faces]
    word, source = class_word_for(photo_dir, [f.gender for _, f in result.faces])
    emb = torch.from_numpy(np.stack([f.embedding for _, f in result.faces]).astype(np.float32))
    emb_flip = torch.from_numpy(np.stack([f.embedding_flip for _, f in result.faces]).astype(np.float32))
    return IdentityRecord(embeddings=emb, embeddings_flip=emb_flip, photos=photos, skipped=skipped,
                          class_word=word, class_word_source=source)


def summary_table(record: IdentityRecord) -> str:
    """A plain-text table of photos used and skipped."""
    rows = [("photo", "status", "detail")]
    for p in record.photos:
        w, h = p.box[2] - p.box[0], p.box[3] - p.box[1]
        detail = f"score {p.det_score:.2f}, face {w:.0f}x{h:.0f}px"
        if p.n_faces > 1:
            detail += f", 1 of {p.n_faces} faces"
        rows.append((Path(p.file).name, "used", detail))
    for s in record.skipped:
        rows.append((Path(s["file"]).name, "skipped", s["reason"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
