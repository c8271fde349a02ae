"""Per image: decode, find exactly one dominant face, crop square, run the frozen models.

    RawSample --decode (EXIF, colour modes)--> RGB uint8
              --FaceAnalyzer.locate (detect, align)--> the face, or a reject reason
              --square crop keeping the face in frame, resize (encoder.crop)--> [R, R, 3] crop, face box
              --augmented view of the aligned face (data_prep.augment)
    kept photos --ArcFace of the aligned faces, their mirrors and the augmented views, EMBED_BATCH photos
                  per recogniser call--> arcface, arcface_flip, arcface_aug
    batch of crops + captions --VAE encode_moments / CLIP-L + encode_prefix / ViT-B/32--> features

A photo that is rejected is counted under one reason (REASONS); a photo that raises anything
unexpected is counted under "error" and logged; neither stops the run. The frozen models are
injected (`FrozenModels`), so tests run the whole path with tiny models.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_prep.augment import FaceAugment, augment_face, key_generator
from data_prep.format import encode_sample, safe_key
from data_prep.sources import RawSample
from encoder.crop import face_crop, square_crop
from encoder.face_analysis import Face, FaceAnalyzer, FacePolicy, FaceRejected, LocatedFace, face_model_block, mirrored
from encoder.photos import MIN_IMAGE_SIDE, PhotoError, decode_image
from models.paths import file_sha256
from models.pixels import to_signed

logger = logging.getLogger(__name__)

REASONS = {
    "unreadable": "the item could not be read from the source (file error, damaged tar, bad JSONL line)",
    "undecodable": "not an image, or a truncated / corrupt image file",
    "image_too_small": "shorter side below min_image_side",
    "missing_caption": "no caption (or an empty one)",
    "no_face": "no face detected",
    "low_det_score": "best detection below min_det_score",
    "face_too_small": "face smaller than min_face_size pixels in the photo",
    "several_faces": "another face larger than max_other_face x the main face's area",
    "face_out_of_frame": "less than min_face_visible of the face box fits in the square crop",
    "face_small_in_crop": "face side below min_face_fraction of the crop side",
    "error": "unexpected exception while processing (logged with the sample key)",
}


@dataclass(frozen=True)
class PrepConfig:
    """What decides which photos are kept and how they are cropped (recorded in the manifest)."""

    resolution: int = 512  # crop side fed to the VAE (latent side = resolution / 8 at full size)
    min_image_side: int = 256  # shorter side of the original photo, pixels
    min_face_size: int = 64  # shorter side of the face box in the original photo, pixels
    min_det_score: float = 0.5
    max_other_face: float = 0.25  # another face with more than this fraction of the main face's area rejects
    min_face_visible: float = 0.9  # fraction of the face box inside the square crop
    min_face_fraction: float = 0.08  # face box shorter side / crop side
    det_size: int = 640  # detector input side
    save_jpg: bool = False  # also store the crop as <key>.jpg
    jpeg_quality: int = 90
    face_aug: FaceAugment = FaceAugment()  # the augmented view behind arcface_aug

    def face_policy(self) -> FacePolicy:
        return FacePolicy(min_face_size=self.min_face_size, min_det_score=self.min_det_score,
                          det_size=self.det_size, select="largest")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------- frozen models
def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): what the features came from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _face_model_fingerprint(model: Any) -> str:
    path = getattr(model, "model_file", None)
    if path and Path(path).is_file():
        return file_sha256(path)
    return f"{type(model).__module__}.{type(model).__name__}"


@dataclass
class FrozenModels:
    """The frozen models data_prep runs, already on `device`.

    faces: encoder.face_analysis.FaceAnalyzer; autoencoder: models.autoencoder.AutoencoderKL;
    text_encoder: models.text_encoder.TextEncoder; image_clip: models.image_clip.ImageCLIP.
    """

    faces: FaceAnalyzer
    autoencoder: torch.nn.Module
    text_encoder: torch.nn.Module
    image_clip: torch.nn.Module
    device: torch.device

    @classmethod
    def from_weights(cls, root: str | os.PathLike | None = None, *, face_pack: str | os.PathLike | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     policy: FacePolicy | None = None, face_providers: list | None = None) -> FrozenModels:
        """Everything from the weights folder (models.paths); model_configs.json there replaces v1."""
        from models import load_autoencoder
        from models.image_clip import ImageCLIP
        from models.paths import find_weights, read_model_configs
        from models.text_encoder import TextEncoder

        device = torch.device(device)
        files = {name: find_weights(name, face_pack if name == "face_pack" else None, root)
                 for name in ("autoencoder", "clip_text", "caption_decoder", "clip_image", "face_pack")}
        configs = read_model_configs(root)
        faces = FaceAnalyzer.from_pack(files["face_pack"], providers=face_providers, policy=policy or FacePolicy())
        autoencoder = load_autoencoder(files["autoencoder"], configs.get("autoencoder"), device=device, dtype=dtype)
        text_encoder = TextEncoder.from_pretrained(files["clip_text"], files["caption_decoder"],
                                                   caption_decoder_config=configs.get("caption_decoder"),
                                                   device=device, dtype=dtype)
        image_clip = ImageCLIP.from_file(files["clip_image"], device, model_cfg=configs.get("clip_image"))
        if dtype != torch.float32:
            image_clip = image_clip.to(dtype=dtype)
        return cls(faces, autoencoder, text_encoder, image_clip, device)

    @functools.cached_property
    def face_model(self) -> dict:
        """The face pack's `face_model` block (encoder.face_analysis.face_model_block), for the manifest."""
        return face_model_block(self.faces)

    def fingerprints(self) -> dict[str, str]:
        """SHA-256 of every model (state dicts; the face models' .onnx files)."""
        recogniser = self.face_model["recognition_sha256"] or self.face_model["recognition_file"]
        return {
            "autoencoder": module_fingerprint(self.autoencoder),
            "text_encoder": module_fingerprint(self.text_encoder.text_model) + "+"
            + module_fingerprint(self.text_encoder.encode_prefix)[:16],
            "image_clip": module_fingerprint(self.image_clip.model),
            "face_detector": _face_model_fingerprint(self.faces.detector),
            "face_recogniser": recogniser,
        }

    @property
    def downsample(self) -> int:
        return self.autoencoder.config.downsample_factor


# ----------------------------------------------------------------------------------- per image
def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> [H, W, 3] uint8 RGB, EXIF orientation applied. Raises PhotoError."""
    if not data:
        raise PhotoError("empty file (0 bytes)")
    return decode_image(io.BytesIO(data))


def rejection_category(reason: str) -> str:
    """FaceRejected reason text -> REASONS key."""
    if reason.startswith("no face"):
        return "no_face"
    if reason.startswith("detection score"):
        return "low_det_score"
    if reason.startswith("face too small"):
        return "face_too_small"
    if reason.startswith("several faces"):
        return "several_faces"
    return "no_face"


EMBED_BATCH = 64  # at most this many photos per recogniser call (3 crops each), instead of two calls per photo
EMBED_MIN = 16  # at least this many (when there are): smaller calls pay the call's overhead for too few crops


def embed_chunk(n: int, threads: int) -> int:
    """Photos per recogniser call for a batch of n accepted photos on `threads` threads: one call per thread
    where the batch allows it (a fixed 64 left most of 12 threads idle while 4 calls ran), within
    [EMBED_MIN, EMBED_BATCH]."""
    return max(1, min(EMBED_BATCH, max(EMBED_MIN, math.ceil(n / max(threads, 1)))))


@dataclass
class Located:
    """A photo that passed every filter, its face not embedded yet (SampleProcessor.locate)."""

    raw: RawSample
    index: int
    crop: np.ndarray
    box: np.ndarray
    located: LocatedFace
    meta: dict
    aug_view: np.ndarray  # uint8 [S, S, 3]: the augmented view of the aligned face behind arcface_aug


@dataclass
class Prepared:
    """A photo that passed every filter: crop [R, R, 3] uint8, face box in crop pixels, metadata."""

    raw: RawSample
    index: int  # the item's position in the source (unique sample keys)
    crop: np.ndarray
    box: np.ndarray  # float32 [4] in crop pixels
    face: Face
    meta: dict
    aug_embedding: np.ndarray  # float32 [512]: ArcFace of an augmented view of the aligned face


class SampleProcessor:
    """prepare(raw) on the CPU (decode, faces, crop; `threads` photos at a time), then features(batch)
    with the frozen models."""

    def __init__(self, models: FrozenModels, config: PrepConfig = PrepConfig(), threads: int = 1):
        self.models, self.config, self.threads = models, config, threads
        f = models.downsample
        if config.resolution % f:
            raise ValueError(f"resolution {config.resolution} is not divisible by the VAE's factor {f}")
        self.policy = config.face_policy()
        # the shards need no gender/age: the pack's attribute model is left out (it ran on every photo)
        self.faces = FaceAnalyzer(models.faces.detector, models.faces.recogniser, None, policy=self.policy)

    def _dominant_face(self, rgb: np.ndarray) -> LocatedFace | str:
        """One detection pass; the face is embedded later, with the other accepted photos' (embed)."""
        try:
            return self.faces.locate(rgb, max_other_face=self.config.max_other_face)
        except FaceRejected as e:
            return rejection_category(e.reason)

    def prepare(self, raw: RawSample, index: int = 0) -> Prepared | str:
        """The cropped photo with its face, or a REASONS key (one photo: process batches the recogniser)."""
        located = self.locate(raw, index)
        return located if isinstance(located, str) else self.embed([located])[0]

    def locate(self, raw: RawSample, index: int = 0) -> Located | str:
        """The cropped photo with its face found but not embedded yet, or a REASONS key."""
        c = self.config
        if raw.error or raw.image is None:
            return "unreadable"
        caption = (raw.caption or "").strip()
        if not caption:
            return "missing_caption"
        try:
            rgb = decode_rgb(raw.image)
        except PhotoError:
            return "undecodable"
        h, w = rgb.shape[:2]
        if min(h, w) < max(c.min_image_side, MIN_IMAGE_SIDE):
            return "image_too_small"
        face = self._dominant_face(rgb)
        if isinstance(face, str):
            return face
        x0, y0, side = square_crop(w, h, face.box)
        box = face.box.astype(np.float64)
        inter = (max(0.0, min(box[2], x0 + side) - max(box[0], x0))
                 * max(0.0, min(box[3], y0 + side) - max(box[1], y0)))
        if inter < c.min_face_visible * max((box[2] - box[0]) * (box[3] - box[1]), 1e-6):
            return "face_out_of_frame"
        if min(box[2] - box[0], box[3] - box[1]) < c.min_face_fraction * side:
            return "face_small_in_crop"
        crop, crop_box = face_crop(rgb, face.box, c.resolution)
        meta = {"identity": raw.identity, "source_key": raw.key, "det_score": round(float(face.det_score), 4),
                "n_faces": int(face.n_faces), "face_box_px": [round(float(v), 2) for v in crop_box],
                "crop": [x0, y0, side], "orig_size": [w, h]}
        view = augment_face(face.aligned, key_generator(safe_key(raw.key, index)), c.face_aug)
        return Located(raw, index, crop, crop_box, face, meta, view)

    def embed(self, photos: list[Located]) -> list[Prepared | str]:
        """ArcFace of each photo's aligned face, its mirror and its augmented view, in one recogniser call.
        One photo whose embedding is invalid is "no_face"; for several, the recogniser's FaceRejected is
        raised (_embed_safely then redoes them one at a time)."""
        if not photos:
            return []
        n = len(photos)
        crops = ([p.located.aligned for p in photos] + [mirrored(p.located.aligned) for p in photos]
                 + [p.aug_view for p in photos])
        try:
            emb = self.faces.embed_aligned(crops)
        except FaceRejected:
            if n == 1:
                return ["no_face"]
            raise
        return [Prepared(p.raw, p.index, p.crop, p.box, p.located.with_embeddings(emb[i], emb[n + i]), p.meta,
                         emb[2 * n + i]) for i, p in enumerate(photos)]

    def _embed_safely(self, photos: list[Located]) -> list[Prepared | str]:
        try:
            return self.embed(photos)
        except Exception:  # never fatal: find the photo (one at a time), count it, log it with its key
            # (an invalid embedding is its photo's "no_face", anything else its "error")
            if len(photos) > 1:
                return [r for p in photos for r in self._embed_safely([p])]
            logger.exception("data_prep: unexpected error on %s", photos[0].raw.key)
            return ["error"]

    def _locate_safely(self, job: tuple[RawSample, int]) -> Located | str:
        raw, index = job
        try:
            return self.locate(raw, index)
        except Exception:  # never fatal: count it, log it with its key
            logger.exception("data_prep: unexpected error on %s", raw.key)
            return "error"

    @torch.no_grad()
    def features(self, batch: list[Prepared]) -> list[dict]:
        """Run the frozen models on a batch of crops -> member dicts for the shard writer."""
        if not batch:
            return []
        m, c = self.models, self.config
        dtype = next(m.autoencoder.parameters()).dtype
        x = to_signed(torch.from_numpy(np.stack([p.crop for p in batch])).to(m.device)).to(dtype)
        moments = m.autoencoder.encode_moments(x).float()
        fp16_max = float(torch.finfo(torch.float16).max)
        moments = moments.clamp(-fp16_max, fp16_max).cpu().numpy()
        text = m.text_encoder.encode([p.raw.caption.strip() for p in batch]).float().cpu().numpy()
        clip = m.image_clip.embed_images([Image.fromarray(p.crop) for p in batch]).float().cpu().numpy()
        latent_box_scale = 1.0 / m.downsample
        samples = []
        for i, p in enumerate(batch):
            arrays = {"moments": moments[i], "text": text[i], "clip": clip[i], "arcface": p.face.embedding,
                      "arcface_flip": p.face.embedding_flip, "arcface_aug": p.aug_embedding,
                      "box": p.box * latent_box_scale}
            jpg = None
            if c.save_jpg:
                buf = io.BytesIO()
                Image.fromarray(p.crop).save(buf, format="JPEG", quality=c.jpeg_quality)
                jpg = buf.getvalue()
            key = safe_key(p.raw.key, p.index)
            samples.append(encode_sample(key, arrays, p.raw.caption.strip(), p.meta, jpg))
        return samples

    def process(self, raws: list[RawSample], first_index: int = 0) -> tuple[list[dict], Counter]:
        """Items first_index, first_index + 1, ... of the source -> (member dicts of the kept ones,
        Counter of reject reasons)."""
        reasons: Counter = Counter()
        kept: list[Prepared] = []
        jobs = [(raw, first_index + i) for i, raw in enumerate(raws)]
        with ThreadPoolExecutor(self.threads) if self.threads > 1 else _InlinePool() as pool:
            # decoding and the ONNX face models release the GIL
            located = list(pool.map(self._locate_safely, jobs))
            accepted = [r for r in located if not isinstance(r, str)]
            size = embed_chunk(len(accepted), self.threads)
            chunks = [accepted[i:i + size] for i in range(0, len(accepted), size)]
            embedded = [r for chunk in pool.map(self._embed_safely, chunks) for r in chunk]
        for result in [r for r in located if isinstance(r, str)] + embedded:
            if isinstance(result, str):
                reasons[result] += 1
            else:
                kept.append(result)
        return self.features(kept), reasons


class _InlinePool:
    """ThreadPoolExecutor's map in the calling thread (threads = 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)
