"""The competition's face model: insightface buffalo_l, detection at 640 x 640, one face per image.

The competition ran insightface's FaceAnalysis with ``prepare(det_size=(640, 640))`` (detection
threshold 0.5) and ``get(img, max_num=1)``, then L2-normalised ``faces[0].embedding``. With
``max_num=1`` insightface keeps, among the detections above the threshold, the one with the
largest ``area - 2 * (squared distance of the box centre from the image centre)`` (its
"default" metric), not simply the highest score; ``select="insightface"`` reproduces that.
There is no minimum face size and no downscaling other than the detector's own resize.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from encoder.face_analysis import Face, FaceAnalyzer, FacePolicy
from models.paths import WeightsError, find_weights, weights_dir

Selection = Literal["insightface", "first", "largest"]
COMPETITION_PACK = "buffalo_l"


@dataclass(frozen=True)
class CompetitionFaceConfig:
    det_size: int = 640
    det_thresh: float = 0.5
    select: Selection = "insightface"  # insightface's max_num=1 choice; "first" = highest score

    def __post_init__(self):
        if self.select not in ("insightface", "first", "largest"):
            raise ValueError(f"select must be 'insightface', 'first' or 'largest', got {self.select!r}")

    def policy(self) -> FacePolicy:
        """Every detection above the threshold, whatever its size, detected at det_size."""
        return FacePolicy(min_face_size=0, min_det_score=self.det_thresh, det_size=self.det_size,
                          max_side=1 << 30, select="first")


def pick_face(faces: Sequence[Face], image_hw: tuple[int, int], select: Selection = "insightface") -> Face | None:
    """The one face the competition's ``FaceAnalysis.get(img, max_num=1)`` would keep.

    faces: detections passing the threshold, highest score first (FaceAnalyzer.analyze_all order);
    image_hw: (height, width) of the image the boxes refer to.
    """
    if not faces:
        return None
    if len(faces) == 1 or select == "first":
        return faces[0]
    boxes = np.stack([np.asarray(f.box, dtype=np.float64) for f in faces])  # [N, 4]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if select == "largest":
        return faces[int(np.argmax(area))]
    h, w = image_hw
    off_x = (boxes[:, 0] + boxes[:, 2]) / 2 - w // 2
    off_y = (boxes[:, 1] + boxes[:, 3]) / 2 - h // 2
    values = area - 2.0 * (off_x ** 2 + off_y ** 2)
    return faces[int(np.argsort(values)[::-1][0])]


def find_face_pack(path: str | os.PathLike | None = None,
                   root: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """The face pack folder to score with, and a note when it is not the competition's buffalo_l.

    An explicit `path` wins; else ``buffalo_l`` in the weights folder (or its ``models/``), else any
    pack `find_weights("face_pack")` finds (antelopev2 gives different numbers: noted).
    """
    if path is not None:
        p = find_weights("face_pack", path)
        note = None if Path(p).name == COMPETITION_PACK else (
            f"face pack {p} is not named {COMPETITION_PACK}: numbers are comparable to the competition's "
            f"only with insightface's buffalo_l pack")
        return Path(p), note
    base = weights_dir(root)
    for c in (base / COMPETITION_PACK, base / "models" / COMPETITION_PACK):
        if c.is_dir():
            return c, None
    try:
        p = find_weights("face_pack", root=root)
    except WeightsError as e:
        raise WeightsError(f"the scorer needs insightface's {COMPETITION_PACK} face pack (the competition's face "
                           f"model): put the unzipped folder at {base / COMPETITION_PACK} or pass --face-pack. "
                           f"({e})") from e
    return Path(p), (f"scoring with {p}, not the competition's {COMPETITION_PACK} pack: face numbers will "
                     f"differ from the competition's")


class CompetitionFaces:
    """One L2-normalised ArcFace embedding per image, chosen the competition's way (or None).

    analyzer: a FaceAnalyzer whose detector and recogniser are used; its policy is replaced by the
    competition's (threshold 0.5, no size limit) and its genderage model is not run.
    """

    def __init__(self, analyzer: FaceAnalyzer, config: CompetitionFaceConfig = CompetitionFaceConfig()):
        self.config = config
        self.analyzer = FaceAnalyzer(analyzer.detector, analyzer.recogniser, None, policy=config.policy())

    @classmethod
    def from_pack(cls, pack_dir: str | os.PathLike, *, providers: Sequence[Any] | None = None,
                  config: CompetitionFaceConfig = CompetitionFaceConfig()) -> CompetitionFaces:
        return cls(FaceAnalyzer.from_pack(pack_dir, providers=providers, policy=config.policy()), config)

    def face(self, img_rgb: np.ndarray) -> Face | None:
        """img_rgb: [H, W, 3] uint8 RGB -> the selected face (embedding [512], box [4]) or None."""
        faces = self.analyzer.analyze_all(img_rgb)
        return pick_face(faces, img_rgb.shape[:2], self.config.select)
