"""The face world as a data_prep source: rendered portraits with captions and identity labels.

Item i of a source over `identities` people with `photos` renders each is render i % photos of
identity first + i // photos (the photos of one person are consecutive, as in a folder-per-person
corpus). Items are rendered on demand, deterministically, so shards can be planned, split across
ranks and redone like those of any other corpus. Images travel as PNG bytes (lossless).

Faces: `RenderedFaces` answers the face analyser's detector call with the renderer's own face box
and landmarks for the images this source produced (looked up by their pixels), so shards can be
built before the world has a trained detector; `--face-boxes detector` uses the face pack's
detector instead.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from data_prep.faceworld.attributes import SPLITS, split_range
from data_prep.faceworld.render import FaceWorld
from data_prep.sources import RawSample, SourceError


def pixel_digest(rgb: np.ndarray) -> bytes:
    """A key for an RGB uint8 image's exact pixels."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    return hashlib.blake2b(a.tobytes() + repr(a.shape).encode(), digest_size=16).digest()


class RenderedFaces:
    """A detector in insightface's SCRFD signature that knows the faces of rendered images.

    detect(img_bgr, input_size=...) -> (dets float32 [N, 5] x1 y1 x2 y2 score, kps float32 [N, 5, 2]),
    N = 1 for an image `remember`ed before, else 0. Each image is forgotten once it was asked for.
    """

    taskname = "detection"

    def __init__(self):
        self._known: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def remember(self, rgb: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> None:
        self._known[pixel_digest(rgb)] = (np.asarray(box, np.float32), np.asarray(landmarks, np.float32))

    def detect(self, img_bgr: np.ndarray, input_size=None, max_num: int = 0, metric: str = "default"):
        found = self._known.pop(pixel_digest(np.asarray(img_bgr)[:, :, ::-1]), None)
        if found is None:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        box, kps = found
        return np.concatenate([box, [1.0]]).astype(np.float32)[None], kps[None]


class FaceworldSource:
    """Rendered portraits of identities [split start + first, ... + identities) x `photos` renders."""

    def __init__(self, seed: int, identities: int, photos: int, *, split: str = "train", first: int = 0,
                 size: int = 64, device: str = "cpu", chunk: int = 64):
        if identities < 1 or photos < 1:
            raise SourceError("faceworld source: --identities and --photos must be at least 1")
        try:
            lo, hi = split_range(split)
        except ValueError as e:
            raise SourceError(f"faceworld source: {e}") from e
        if first < 0 or lo + first + identities > hi:
            raise SourceError(f"faceworld source: identities {first}..{first + identities - 1} do not fit the "
                              f"{split} split ({hi - lo} identities; splits {SPLITS})")
        try:
            self.world = FaceWorld(seed, size=size, device=device, chunk=chunk)
        except ValueError as e:
            raise SourceError(f"faceworld source: {e}") from e
        self.seed, self.identities, self.photos, self.split = int(seed), identities, photos, split
        self.first_identity = lo + first
        self.size = size
        self.faces = RenderedFaces()

    def __len__(self) -> int:
        return self.identities * self.photos

    def describe(self) -> dict:
        return {"kind": "faceworld", "seed": self.seed, "split": self.split, "first_identity": self.first_identity,
                "identities": self.identities, "photos": self.photos, "size": self.size,
                "renderer": self.world.version, "items": len(self)}

    def item(self, i: int) -> tuple[int, int]:
        """(identity index, render index) of item i."""
        return self.first_identity + i // self.photos, i % self.photos

    def read(self, start: int, stop: int) -> Iterator[RawSample]:
        stop = min(stop, len(self))
        step = self.world.chunk
        for lo in range(start, stop, step):
            items = np.arange(lo, min(lo + step, stop))
            ids = self.first_identity + items // self.photos
            batch = self.world.render(ids, items % self.photos)
            images = batch.images.cpu().numpy()
            for j in range(len(items)):
                self.faces.remember(images[j], batch.boxes[j], batch.landmarks[j])
                buf = io.BytesIO()
                Image.fromarray(images[j]).save(buf, format="PNG", compress_level=1)
                identity, render = int(batch.identities[j]), int(batch.renders[j])
                yield RawSample(f"faceworld{self.seed}/{identity:07d}/{render:04d}", buf.getvalue(), batch.captions[j],
                                f"faceworld{self.seed}-{identity}")


def check_prep(source: FaceworldSource, prep) -> None:
    """Refuse filters that would reject every render (data_prep's defaults are for real photos)."""
    if prep.min_image_side > source.size:
        raise SourceError(f"faceworld renders are {source.size} px: pass --min-image-side {source.size} "
                          f"(or less) and a --min-face-size of about {source.size // 5}")
    if prep.resolution > source.size:
        raise SourceError(f"--resolution {prep.resolution} is larger than the {source.size} px renders; "
                          f"use --resolution {source.size}")


def with_rendered_faces(models, source: FaceworldSource):
    """The frozen models with the face analyser's detector replaced by the source's RenderedFaces."""
    import dataclasses

    from encoder.face_analysis import FaceAnalyzer

    faces = FaceAnalyzer(source.faces, models.faces.recogniser, None, policy=models.faces.policy)
    return dataclasses.replace(models, faces=faces)
