"""A person of the face world: geometry parameters drawn from (seed, identity index) alone.

Identity lives in geometry: face outline, eyes (spacing, size, openness, tilt, iris size), brows,
nose, mouth, ears, hair style and its shape parameters, facial hair, moles and freckles. Colour
carries little: skin tone, hair colour and iris colour come from small palettes shared by many
people (and every render changes light and white balance).

Units: "head units", the face ellipse's centre at (0, 0), y pointing down, the face about 2 wide
and 2.6 tall. Every parameter is a float64 [B] array (categorical ones hold small integers; the
moles' mole_x, mole_y, mole_r are [B, MAX_MOLES]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.faceworld.attributes import CLASS_WORDS
from data_prep.faceworld.hashing import STREAM_IDENTITY, Draws, uniforms

# small shared palettes (linear-ish RGB in [0, 1])
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.89, 0.69, 0.55], [0.78, 0.57, 0.42], [0.60, 0.41, 0.28],
                       [0.40, 0.26, 0.17]])
HAIR_COLORS = np.array([[0.07, 0.06, 0.06], [0.24, 0.15, 0.09], [0.45, 0.29, 0.16], [0.85, 0.70, 0.40],
                        [0.62, 0.24, 0.10], [0.70, 0.70, 0.70]])
IRIS_COLORS = np.array([[0.30, 0.18, 0.08], [0.14, 0.09, 0.05], [0.25, 0.45, 0.75], [0.30, 0.52, 0.30],
                        [0.50, 0.55, 0.58]])

HAIR_STYLES = ("bald", "buzz", "short", "side part", "afro", "spiky", "bob", "long", "ponytail", "bun",
               "pigtails", "long wavy")
# per class word (man, woman, boy, girl): weights of HAIR_STYLES
HAIR_STYLE_WEIGHTS = np.array([
    [0.8, 1.5, 2.0, 2.0, 0.8, 1.2, 0.1, 0.3, 0.2, 0.2, 0.0, 0.2],
    [0.0, 0.1, 0.5, 0.3, 0.6, 0.0, 2.0, 2.5, 1.2, 1.2, 0.2, 2.0],
    [0.0, 1.2, 2.0, 2.0, 0.8, 1.5, 0.4, 0.2, 0.0, 0.0, 0.0, 0.1],
    [0.0, 0.0, 0.2, 0.2, 0.5, 0.0, 2.0, 2.0, 1.5, 1.0, 1.5, 1.5],
])
HAIR_COLOR_WEIGHTS = np.array([[3, 3, 2, 1.5, 1, 1], [3, 3, 2, 2, 1, 0.3], [3, 3, 2, 2, 1, 0], [3, 3, 2, 2, 1, 0]])
FACIAL_HAIR = ("none", "stubble", "mustache", "goatee", "beard")
FACIAL_HAIR_WEIGHTS = (2.0, 1.0, 0.8, 0.8, 1.5)  # men only
MAX_MOLES = 3


@dataclass(frozen=True)
class Identities:
    """Parameters of B people. index: int64 [B]; kind: int [B] into CLASS_WORDS; p: name -> float64 [B]."""

    seed: int
    index: np.ndarray
    kind: np.ndarray
    p: dict[str, np.ndarray]

    @property
    def class_words(self) -> list[str]:
        return [CLASS_WORDS[k] for k in self.kind]

    def __len__(self) -> int:
        return len(self.index)


def _by_kind(kind: np.ndarray, values: tuple[float, float, float, float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[kind]


def identity_params(seed: int, index) -> Identities:
    """The people with identity indices `index` ([B] ints) under `seed` (pure function of both)."""
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
    d = Draws(uniforms(seed, STREAM_IDENTITY, idx, 0, 96))
    kind = d.choice([1, 1, 1, 1])
    child = kind >= 2
    female = (kind == 1) | (kind == 3)
    p: dict[str, np.ndarray] = {}
    u = d.uniform
    # face outline: half-width, half-height, lower-face width, squareness of the jaw
    p["face_w"] = u(0.90, 1.06) + 0.03 * child
    p["face_h"] = np.where(child, u(1.12, 1.26), u(1.24, 1.44))
    p["jaw_w"] = u(0.70, 0.98) + 0.04 * (kind == 0)
    p["jaw_sq"] = np.minimum(u(0.0, 1.0) + 0.25 * (kind == 0), 1.0)  # squareness of the jaw
    p["skin"] = d.choice([1, 1, 1, 1, 1]).astype(np.float64)
    # eyes (both: mirror images)
    p["eye_y"] = np.where(child, u(0.02, 0.14), u(-0.12, 0.02))
    p["eye_dx"] = u(0.33, 0.47)
    p["eye_w"] = u(0.15, 0.21) + 0.03 * child
    p["eye_h"] = u(0.055, 0.10) + 0.015 * child
    p["eye_tilt"] = u(-0.28, 0.28)
    p["iris_r"] = u(0.055, 0.075) + 0.01 * child
    p["iris"] = d.choice([3, 2, 1.5, 1, 1]).astype(np.float64)
    # brows
    p["brow_dy"] = u(0.16, 0.27)
    p["brow_w"] = u(0.15, 0.26)
    p["brow_t"] = u(0.035, 0.075) - 0.012 * female
    p["brow_arch"] = u(0.0, 0.09)
    p["brow_tilt"] = u(-0.18, 0.18)
    p["brow_shift"] = u(-0.04, 0.06)
    # nose
    p["nose_y"] = np.where(child, u(0.24, 0.34), u(0.26, 0.44))
    p["nose_w"] = u(0.10, 0.19) - 0.02 * child
    p["nose_bridge"] = u(0.0, 1.0)  # how visible the bridge shadow is
    p["nose_tip"] = u(0.025, 0.06)
    # mouth
    p["mouth_y"] = np.where(child, u(0.52, 0.64), u(0.60, 0.76))
    p["mouth_w"] = u(0.27, 0.40) - 0.03 * child
    p["lip_top"] = u(0.022, 0.05) + 0.01 * female
    p["lip_bot"] = u(0.03, 0.065) + 0.01 * female
    p["lip_red"] = u(0.0, 0.5) + 0.5 * (kind == 1)
    p["mouth_curve"] = u(-0.5, 0.5)
    # ears
    p["ear_y"] = u(-0.08, 0.14)
    p["ear_size"] = u(0.16, 0.26)
    p["ear_out"] = u(0.0, 0.10)
    # hair
    p["hair_style"] = d.choice(HAIR_STYLE_WEIGHTS[kind]).astype(np.float64)
    p["hair_color"] = d.choice(HAIR_COLOR_WEIGHTS[kind]).astype(np.float64)
    p["hair_volume"] = u(0.06, 0.26)
    p["hairline"] = u(-0.72, -0.45)  # y of the hairline at the middle, in units of face_h
    p["fringe"] = u(0.0, 1.0)  # > 0.5: bangs down towards the brows
    p["hair_part"] = u(-0.6, 0.6)
    p["hair_len"] = u(0.0, 1.0)
    p["hair_wave"] = u(0.0, 1.0)
    # facial hair (men only)
    p["beard"] = np.where(kind == 0, d.choice(FACIAL_HAIR_WEIGHTS), 0).astype(np.float64)
    p["beard_t"] = u(0.5, 1.0)
    # marks: up to MAX_MOLES moles (x, y, radius; radius 0 = none), freckles density (0 = none)
    mole_on = d.take(MAX_MOLES) < 0.3
    p["mole_x"] = d.take(MAX_MOLES) * 1.4 - 0.7
    p["mole_y"] = d.take(MAX_MOLES) * 1.3 - 0.4
    p["mole_r"] = np.where(mole_on, 0.03 + 0.025 * d.take(MAX_MOLES), 0.0)
    p["freckles"] = np.where(d.take() < 0.18, u(0.3, 1.0), 0.0)
    p["freckle_seed"] = np.floor(d.take() * 4096)
    return Identities(seed, idx, kind, p)
