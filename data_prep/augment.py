"""The augmented face view: what a sample without a same-person pair is conditioned on.

A sample must never be conditioned on the exact embedding of the face it is asked to reproduce:
the identity module would learn to copy that one photo (pose, light, expression) instead of the
person. When the corpus offers no other photo of the person, the next best thing is another *view*
of the same photo. data_prep stores, per face, the ArcFace embedding of one altered view of the
aligned crop (shard member `arcface_aug`):

    aligned crop [S, S, 3] --crop jitter (shift, zoom, rotation about the centre)--> --flip (p)-->
    --colour (brightness, contrast, saturation)--> --Gaussian blur (p)--> --downscale and back (p)-->
    the view [S, S, 3] --the pack's recogniser--> arcface_aug [512]

The random numbers come from the sample key (`key_generator`), a fixed count per view, so a rerun
of data_prep writes the same bytes and changing one range does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FaceAugment:
    """Ranges of the augmented view (recorded in the manifest with the other prep settings)."""

    max_shift: float = 0.06  # translation per axis, fraction of the crop side
    max_zoom: float = 0.1  # scale in [1 - max_zoom, 1 + max_zoom] about the centre
    max_rotation: float = 10.0  # degrees
    p_flip: float = 0.5  # horizontal mirror
    brightness: float = 0.25  # pixel factor in [1 - b, 1 + b]
    contrast: float = 0.25  # distance to the mean grey times [1 - c, 1 + c]
    saturation: float = 0.3  # distance to the pixel's grey times [1 - s, 1 + s]
    p_blur: float = 0.5
    max_blur_sigma: float = 1.5  # Gaussian sigma in [0.3, max] crop pixels
    p_downscale: float = 0.5
    min_downscale: float = 0.3  # shrunk to [min, 0.7] x the crop side, then enlarged back

    def to_dict(self) -> dict:
        return asdict(self)


def key_generator(key: str) -> np.random.Generator:
    """A generator seeded from the sample key (SHA-256), the same on every machine and run."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little"))


def augment_face(aligned: np.ndarray, rng: np.random.Generator, aug: FaceAugment = FaceAugment()) -> np.ndarray:
    """aligned [S, S, 3] uint8 RGB -> the altered view [S, S, 3] uint8 RGB (same side S).

    Draws a fixed count of numbers from `rng` whatever the outcome of each coin.
    """
    s = aligned.shape[0]
    if aligned.ndim != 3 or aligned.shape[1] != s or aligned.shape[2] != 3 or aligned.dtype != np.uint8:
        raise ValueError(f"expected a square [S, S, 3] uint8 crop, got {aligned.shape} {aligned.dtype}")
    angle, zoom = rng.uniform(-aug.max_rotation, aug.max_rotation), rng.uniform(1 - aug.max_zoom, 1 + aug.max_zoom)
    shift = rng.uniform(-aug.max_shift, aug.max_shift, size=2) * s
    flip, blur, down = rng.random(3)
    gain, contrast, saturation = (rng.uniform(1 - r, 1 + r) for r in (aug.brightness, aug.contrast, aug.saturation))
    sigma, side = rng.uniform(0.3, max(aug.max_blur_sigma, 0.3)), rng.uniform(aug.min_downscale, 0.7)

    m = cv2.getRotationMatrix2D((s / 2, s / 2), float(angle), float(zoom))
    m[:, 2] += shift
    img = cv2.warpAffine(np.ascontiguousarray(aligned), m, (s, s), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    if flip < aug.p_flip:
        img = img[:, ::-1]
    x = img.astype(np.float32) * gain
    x = (x - x.mean()) * contrast + x.mean()
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = grey + (x - grey) * saturation
    img = np.ascontiguousarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))
    if blur < aug.p_blur:
        img = cv2.GaussianBlur(img, (0, 0), float(sigma))
    if down < aug.p_downscale:
        small = max(8, round(s * side))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                         interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)
