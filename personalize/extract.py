"""Photos of one person -> identity record (what `train.py` does before any refinement).

    setup = face_setup(encoder=None, face_pack=None, weights=None, device=device)  # module, pack, analyser
    record = personalize_photos("train_data/boy1", setup)                           # the record train.py saves

`face_setup` and `personalize_photos` are train.py's steps; the web page (personalize/app.py) calls
the same two functions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class FaceSetup:
    """What photos are embedded with: the identity module found (None: none), the face pack picked for it
    (and why), its analyser, its face_model block, and the warnings of the pack check."""

    analyzer: object  # encoder.face_analysis.FaceAnalyzer
    encoder: Path | None
    pack_dir: Path
    why: str
    block: dict
    warnings: list[str] = field(default_factory=list)


_LOADED: dict[tuple, object] = {}  # face analysers this process has loaded (loaded_analyzer)
_LOADED_MAX = 4


def loaded_analyzer(pack_dir: str | Path, policy, providers: tuple[str, ...] | None):
    """FaceAnalyzer.from_pack, loaded once per process for the same pack files, policy and providers.

    A process that personalises many identities (eval.world, a notebook, the web page) then pays for
    the face models once, not per identity; the pack is loaded again when any of its files changes
    (name, size or modification time). Analysers are read-only after loading, so sharing one is safe."""
    from encoder.face_analysis import FaceAnalyzer

    folder = Path(pack_dir).expanduser()
    files = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
                  ) if folder.is_dir() else ()
    key = (str(folder.resolve()), files, policy, providers)
    if key not in _LOADED:
        analyzer = FaceAnalyzer.from_pack(folder, policy=policy, providers=None if providers is None else
                                          list(providers))  # raises before anything is cached
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = analyzer
    return _LOADED[key]


def face_setup(*, encoder: str | None = None, face_pack: str | None = None, weights: str | None = None,
               device=None, policy=None, allow_mismatch: bool = False,
               announce: Callable[[str], object] | None = None) -> FaceSetup:
    """train.py's set-up: the identity module (`encoder`, else the weights folder's, else none), the face
    pack it was pretrained with (unless `face_pack`), that pack's analyser, and check_pack. `announce`
    gets the "face pack: ..." line before the pack is loaded. Raises the commands' UserErrors."""
    from encoder.face_analysis import FacePolicy, face_model_block
    from models.paths import WeightsError, find_weights
    from personalize.face_model import check_pack, module_face_model, pick_face_pack

    try:
        enc = find_weights("identity", encoder)
    except WeightsError:
        if encoder:  # asked for one explicitly: that it is missing is an error
            raise
        enc = None
    module_block = module_face_model(enc)
    pack_dir, why = pick_face_pack(face_pack, module_block, enc, root=weights)
    if announce is not None:
        announce(f"face pack: {pack_dir} ({why})")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    analyzer = loaded_analyzer(pack_dir, policy or FacePolicy(), None if on_cuda else ("CPUExecutionProvider",))
    block = face_model_block(analyzer)
    warnings = check_pack(module_block, block, encoder=enc, pack_dir=pack_dir, allow=allow_mismatch)
    return FaceSetup(analyzer=analyzer, encoder=enc, pack_dir=pack_dir, why=why, block=block, warnings=warnings)


def personalize_photos(photo_dir: str | Path, setup: FaceSetup, *, progress: bool = True) -> IdentityRecord:
    """extract_identity with `setup`'s analyser, the record marked with its identity module and face model
    (what train.py saves when it does not refine). Raises NoUsablePhotos."""
    from encoder.identity import checkpoint_hash

    record = extract_identity(photo_dir, setup.analyzer, progress=progress)
    record.encoder = None if setup.encoder is None else {"path": str(setup.encoder),
                                                         "sha256": checkpoint_hash(setup.encoder)}
    record.face_model = setup.block
    return record


def summary_rows(record: IdentityRecord) -> list[tuple[str, str, str]]:
    """(photo name, "used" | "skipped", detail) for every photo used, then every entry skipped."""
    rows = []
    for p in record.photos:
        w, h = p.box[2] - p.box[0], p.box[3] - p.box[1]
        detail = f"score {p.det_score:.2f}, face {w:.0f}x{h:.0f}px"
        if p.n_faces > 1:
            detail += f", 1 of {p.n_faces} faces"
        rows.append((Path(p.file).name, "used", detail))
    for s in record.skipped:
        rows.append((Path(s["file"]).name, "skipped", s["reason"]))
    return rows


def summary_table(record: IdentityRecord) -> str:
    """A plain-text table of photos used and skipped."""
    rows = [("photo", "status", "detail"), *summary_rows(record)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
