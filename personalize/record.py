"""The identity record that `train.py` writes and `sample.py` reads.

A folder with two files:
  identity.safetensors  embeddings [N, 512], embeddings_flip [N, 512], and tokens [K, token_dim]
                        when refinement ran; its metadata holds the record's JSON (below). This
                        one file is the record: written to a temporary file and renamed into place,
                        so a run killed while writing leaves the previous record whole.
  identity.json         the same JSON for people to read (written after): format/version, photos
                        used (file, box, score, ...), photos skipped with the reason, class word
                        and its source, the identity-module checkpoint's path and SHA-256, the
                        face model the embeddings come from (`face_model`, see
                        encoder.face_analysis), refinement settings and losses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from encoder.projector import pool_embeddings
from models.atomic import atomic_write, write_text_atomic
from models.errors import UserError

RECORD_FORMAT = "unidiffuser-faceid-record"
RECORD_VERSION = 1
TENSORS_FILE = "identity.safetensors"
META_FILE = "identity.json"


class RecordError(UserError, RuntimeError):
    """An identity record is missing, damaged or of another version."""


@dataclass
class PhotoInfo:
    file: str
    box: list[float]
    det_score: float
    n_faces: int
    gender: str | None = None
    age: float | None = None


@dataclass
class IdentityRecord:
    embeddings: torch.Tensor  # [N, 512] L2-normalised ArcFace embeddings, one per used photo
    embeddings_flip: torch.Tensor  # [N, 512] of the mirrored crops
    photos: list[PhotoInfo]
    skipped: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    class_word: str = "person"
    class_word_source: str = "default"
    encoder: dict | None = None  # {"path": ..., "sha256": ...}
    face_model: dict | None = None  # encoder.face_analysis.face_model_block of the pack that embedded the photos
    tokens: torch.Tensor | None = None  # [K, token_dim] refined identity tokens
    refine: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pooled(self) -> torch.Tensor:
        """[512] the normalised mean of all photos and their mirrors."""
        return pool_embeddings(self.embeddings, self.embeddings_flip)

    def meta(self) -> dict:
        """The record's JSON."""
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION,
                "class_word": self.class_word, "class_word_source": self.class_word_source,
                "photos": [asdict(p) for p in self.photos], "skipped": self.skipped,
                "encoder": self.encoder, "face_model": self.face_model, "refine": self.refine, **self.extra}

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.float().contiguous(),
                   "embeddings_flip": self.embeddings_flip.float().contiguous()}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens.detach().float().cpu().contiguous()
        text = json.dumps(self.meta(), indent=2)
        atomic_write(folder / TENSORS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"record": text}))
        write_text_atomic(folder / META_FILE, text)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> IdentityRecord:
        folder = Path(folder)
        t_path = folder / TENSORS_FILE
        if not t_path.is_file():
            raise RecordError(f"{folder} holds no identity record ({TENSORS_FILE}). "
                              f"Create one with: python train.py -d <photo folder> -o {folder}")
        try:
            with safe_open(str(t_path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["record"])
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:  # safetensors and json raise several types for damaged files
            raise RecordError(f"cannot read the identity record {t_path} ({type(e).__name__}: {e}); "
                              "it is damaged or was not written by train.py. Run train.py again.") from e
        if meta.get("format") != RECORD_FORMAT or meta.get("version") != RECORD_VERSION:
            raise RecordError(f"{t_path} is format {meta.get('format')!r} version {meta.get('version')!r}; "
                              f"this code reads {RECORD_FORMAT!r} version {RECORD_VERSION}. Run train.py again.")
        known = {"format", "version", "class_word", "class_word_source", "photos", "skipped", "encoder", "face_model",
                 "refine"}
        try:
            return cls(embeddings=t["embeddings"], embeddings_flip=t["embeddings_flip"],
                       photos=[PhotoInfo(**p) for p in meta["photos"]], skipped=meta.get("skipped", []),
                       class_word=meta.get("class_word", "person"),
                       class_word_source=meta.get("class_word_source", "default"),
                       encoder=meta.get("encoder"), face_model=meta.get("face_model"), tokens=t.get("tokens"),
                       refine=meta.get("refine"),
                       extra={k: v for k, v in meta.items() if k not in known})
        except (KeyError, TypeError) as e:
            raise RecordError(f"{t_path} is incomplete ({type(e).__name__}: {e}); run train.py again.") from e

    def fingerprint(self) -> str:
        """SHA-256 of what generation depends on: the embeddings, the tokens and the encoder hash."""
        h = hashlib.sha256()
        for t in (self.embeddings, self.embeddings_flip, self.tokens):
            if t is not None:
                h.update(t.float().contiguous().numpy().tobytes())
        h.update(json.dumps(self.encoder, sort_keys=True).encode())
        return h.hexdigest()

