"""The identity record that `train.py` writes and `sample.py` reads.

A folder with two files:
  identity.safetensors  embeddings [N, 512], embeddings_flip [N, 512], pooled [512],
                        and tokens [K, token_dim] when refinement ran
  identity.json         format/version, photos used (file, box, score, ...), photos skipped with
                        the reason, class word and its source, the identity-module checkpoint's
                        path and SHA-256, refinement settings and losses, the tensors file's SHA-256

Each file is written to a temporary file and renamed into place, tensors first; identity.json
carries the tensors' hash, so a reader never mixes the files of two runs, and a run killed while
writing leaves the previous record readable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from encoder.identity import file_sha256
from encoder.projector import pool_embeddings
from models.weights import atomic_write

RECORD_FORMAT = "unidiffuser-faceid-record"
RECORD_VERSION = 1
TENSORS_FILE = "identity.safetensors"
META_FILE = "identity.json"


class RecordError(RuntimeError):
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
    tokens: torch.Tensor | None = None  # [K, token_dim] refined identity tokens
    refine: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pooled(self) -> torch.Tensor:
        """[512] the normalised mean of all photos and their mirrors."""
        return pool_embeddings(self.embeddings, self.embeddings_flip)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": self.embeddings.float().contiguous(),
                   "embeddings_flip": self.embeddings_flip.float().contiguous(),
                   "pooled": self.pooled.float().contiguous()}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens.detach().float().cpu().contiguous()
        digest = {}

        def write_tensors(tmp: Path) -> None:
            save_file(tensors, str(tmp))
            digest["sha256"] = file_sha256(tmp)

        atomic_write(folder / TENSORS_FILE, write_tensors)
        meta = {"format": RECORD_FORMAT, "version": RECORD_VERSION,
                "class_word": self.class_word, "class_word_source": self.class_word_source,
                "photos": [asdict(p) for p in self.photos], "skipped": self.skipped,
                "encoder": self.encoder, "refine": self.refine, "tensors_sha256": digest["sha256"],
                **self.extra}
        atomic_write(folder / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> IdentityRecord:
        folder = Path(folder)
        meta_path, t_path = folder / META_FILE, folder / TENSORS_FILE
        if not meta_path.is_file() or not t_path.is_file():
            raise RecordError(f"{folder} holds no identity record ({META_FILE} and {TENSORS_FILE}). "
                              f"Create one with: python train.py -d <photo folder> -o {folder}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecordError(f"{meta_path} is not valid JSON ({e}); run train.py again.") from e
        if meta.get("format") != RECORD_FORMAT or meta.get("version") != RECORD_VERSION:
            raise RecordError(f"{meta_path} is format {meta.get('format')!r} version {meta.get('version')!r}; "
                              f"this code reads {RECORD_FORMAT!r} version {RECORD_VERSION}. Run train.py again.")
        if meta.get("tensors_sha256") and file_sha256(t_path) != meta["tensors_sha256"]:
            raise RecordError(f"{t_path} does not match {meta_path} (hash differs): the record was "
                              "modified or damaged. Run train.py again.")
        try:
            t = load_file(str(t_path))
        except Exception as e:
            raise RecordError(f"cannot read {t_path} ({e}); run train.py again.") from e
        known = {"format", "version", "class_word", "class_word_source", "photos", "skipped", "encoder",
                 "refine", "tensors_sha256"}
        return cls(embeddings=t["embeddings"], embeddings_flip=t["embeddings_flip"],
                   photos=[PhotoInfo(**p) for p in meta["photos"]], skipped=meta.get("skipped", []),
                   class_word=meta.get("class_word", "person"),
                   class_word_source=meta.get("class_word_source", "default"),
                   encoder=meta.get("encoder"), tokens=t.get("tokens"), refine=meta.get("refine"),
                   extra={k: v for k, v in meta.items() if k not in known})

