"""Scores of the identity world (issue 16): identity, edits, copy-paste, diversity, and their intervals.

    scorer = WorldScorer.from_world("checkpoints/world", device="cuda")
    gen = scorer.faces_of(images)                      # FaceFeatures of uint8 [H, W, 3] RGB images
    sim = identity_similarity(gen, scorer.faces_of(references))
    ok = edit_success(scorer.attributes_of(images), wanted)
    interval = bootstrap_interval(per_identity_means)

Faces are found and embedded with the world's frozen models exactly as insightface's FaceAnalysis
would: the world's detector (faces/, with its pack.json policy) and the EVALUATION recogniser
(eval_faces/, never used in training or conditioning), on the 64 x 64 images themselves; the face
kept is the one insightface's `get(img, max_num=1)` keeps (eval.competition_faces.pick_face). An
image in which no face is found scores 0 identity similarity.

- identity similarity of an image: the mean cosine between its face and the person's reference
  renders (renders that were not among the conditioning photos), 0 without a face (the competition's
  rule). In this world an unrelated face's cosine to a person is often well below 0, so an image
  without a face can score above one with the wrong face: eval.world and the demo also report
  `identity_similarity_found`, the mean over the images with a face, next to the rate of faces found.
- copy-paste of an image: its highest cosine to a conditioning photo minus its mean cosine to the
  references (a method that pastes its input scores high; renders of the person score about 0);
  undefined (NaN) without a face.
- edit success of an image: the attribute classifier finds every attribute its prompt states
  (pretrain.world.attributes.attributes_found; a generic "hat" is any hat). World-CLIP text
  similarity (the CLIP-T analogue): cosine between the image's and the prompt's embeddings.
- diversity across one prompt's images: pose (mean pairwise distance of a landmark pose
  descriptor: nose and mouth offsets from the eye midpoint in inter-ocular units, and the eye
  line's roll) and expression (fraction of image pairs whose predicted expression differs).
- bootstrap_interval: percentile interval of the mean over identities, resampling identities.

The demo (issue 17) reuses these functions on its own images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EMBED_DIM = 512


@dataclass
class FaceFeatures:
    """Faces of N images: embeddings [N, D] float32 (L2-normalised; zero rows where no face was found),
    found [N] bool, landmarks [N, 5, 2] float32 (NaN where no face), boxes [N, 4] float32 (NaN likewise)."""

    embeddings: np.ndarray
    found: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.found)

    @classmethod
    def empty(cls, n: int, dim: int = EMBED_DIM) -> FaceFeatures:
        return cls(np.zeros((n, dim), np.float32), np.zeros(n, bool), np.full((n, 5, 2), np.nan, np.float32),
                   np.full((n, 4), np.nan, np.float32))

    def select(self, index) -> FaceFeatures:
        """The faces of the images `index` picks (a slice, an index array or a boolean mask)."""
        return FaceFeatures(self.embeddings[index], self.found[index], self.landmarks[index], self.boxes[index])

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.embeddings, "found": self.found, "landmarks": self.landmarks, "boxes": self.boxes}

    @classmethod
    def from_dict(cls, d: Mapping[str, np.ndarray]) -> FaceFeatures:
        return cls(np.asarray(d["embeddings"], np.float32), np.asarray(d["found"], bool),
                   np.asarray(d["landmarks"], np.float32), np.asarray(d["boxes"], np.float32))


# --------------------------------------------------------------------------------------- per image
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, D] x [M, D] -> [N, M] cosines (rows normalised here; zero rows give 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def identity_similarity(gen: FaceFeatures, refs: FaceFeatures) -> np.ndarray:
    """[N] mean cosine of each image's face to the reference faces; 0 where the image has no face.
    All NaN when no reference has a face (nothing to compare with)."""
    if not refs.found.any():
        return np.full(len(gen), np.nan)
    sims = _cosines(gen.embeddings, refs.embeddings[refs.found]).mean(axis=1)
    return np.where(gen.found, sims, 0.0)


def copy_paste(gen: FaceFeatures, cond: FaceFeatures, refs: FaceFeatures) -> np.ndarray:
    """[N] (highest cosine to a conditioning photo) - (mean cosine to the references); NaN where the
    image has no face or no conditioning photo / reference has one."""
    if not cond.found.any() or not refs.found.any():
        return np.full(len(gen), np.nan)
    nearest = _cosines(gen.embeddings, cond.embeddings[cond.found]).max(axis=1)
    others = _cosines(gen.embeddings, refs.embeddings[refs.found]).mean(axis=1)
    return np.where(gen.found, nearest - others, np.nan)


def edit_success(predicted: Sequence[Mapping[str, str | None]], wanted: Sequence[Mapping[str, str]]) -> np.ndarray:
    """[N] bool: every attribute wanted[i] states is found in predicted[i] (an empty wish is met)."""
    from pretrain.world.attributes import attributes_found

    if len(predicted) != len(wanted):
        raise ValueError(f"{len(predicted)} predictions for {len(wanted)} prompts")
    return np.array([all(attributes_found(p, w).values()) for p, w in zip(predicted, wanted)], dtype=bool)


def pose_descriptor(landmarks: np.ndarray) -> np.ndarray:
    """[N, 5, 2] landmarks (eyes, nose, mouth corners) -> [N, 5]: nose and mouth-centre offsets from the
    eye midpoint (x, y) in inter-ocular units, and the eye line's roll (radians). NaN rows stay NaN."""
    lm = np.asarray(landmarks, np.float64)
    eyes = (lm[:, 0] + lm[:, 1]) / 2
    axis = lm[:, 1] - lm[:, 0]
    iod = np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-6)
    nose = (lm[:, 2] - eyes) / iod
    mouth = ((lm[:, 3] + lm[:, 4]) / 2 - eyes) / iod
    roll = np.arctan2(axis[:, 1], axis[:, 0])[:, None]
    return np.concatenate([nose, mouth, roll], axis=1)


def _mean_pairwise(values: np.ndarray, distance) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    return float(np.mean([distance(values[i], values[j]) for i in range(n) for j in range(i + 1, n)]))


def pose_diversity(landmarks: np.ndarray, found: np.ndarray) -> float:
    """Mean pairwise Euclidean distance of pose descriptors among one prompt's images with a face
    (NaN with fewer than two)."""
    d = pose_descriptor(np.asarray(landmarks)[np.asarray(found, bool)])
    return _mean_pairwise(d, lambda a, b: float(np.linalg.norm(a - b)))


def expression_diversity(predicted: Sequence[Mapping[str, str | None]]) -> float:
    """Fraction of one prompt's image pairs whose predicted expression differs (NaN with one image)."""
    expr = np.array([p.get("expression") for p in predicted], dtype=object)
    return _mean_pairwise(expr, lambda a, b: float(a != b))


def clip_text_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """[N] cosine between each image's and its prompt's world-CLIP embeddings ([N, D] each)."""
    a = torch.nn.functional.normalize(image_features.float(), dim=-1)
    b = torch.nn.functional.normalize(text_features.float(), dim=-1)
    return (a * b).sum(-1).cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------- intervals
def bootstrap_interval(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """{"mean", "lo", "hi", "n"}: the mean of per-identity values and the percentile bootstrap interval of
    that mean (identities resampled with replacement); NaN values are left out; None fields when empty."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return {"mean": float(v.mean()), "lo": float(np.quantile(means, a)), "hi": float(np.quantile(means, 1 - a)),
            "n": int(len(v))}


# ------------------------------------------------------------------------------------------ models
class WorldScorer:
    """The world's frozen judges: faces (detector + evaluation recogniser, an
    encoder.face_analysis.FaceAnalyzer), the attribute classifier (pretrain.world.attributes) and the
    world-CLIP (a models.image_text.ImageTextModel)."""

    def __init__(self, faces, classifier, clip):
        self.faces, self.classifier, self.clip = faces, classifier, clip

    @classmethod
    def from_world(cls, world: str | os.PathLike, device: torch.device | str = "cpu") -> WorldScorer:
        from models.image_text import load_image_text_model
        from pretrain.world.attributes import EXPORT_DIR, AttributeClassifier
        from pretrain.world.faces import load_world_analyzer

        world, device = Path(world), torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        faces = load_world_analyzer(world, "evaluation", providers=providers)
        classifier = AttributeClassifier.from_folder(world / EXPORT_DIR, device)
        clip, _ = load_image_text_model(root=world, device=device)
        return cls(faces, classifier, clip)

    def faces_of(self, images: Sequence[np.ndarray]) -> FaceFeatures:
        """uint8 [H, W, 3] RGB images -> their FaceFeatures (the face insightface's max_num=1 keeps)."""
        from eval.competition_faces import pick_face

        out = FaceFeatures.empty(len(images))
        for i, img in enumerate(images):
            face = pick_face(self.faces.analyze_all(np.asarray(img)), np.asarray(img).shape[:2])
            if face is None:
                continue
            out.embeddings[i] = face.embedding
            out.found[i] = True
            out.landmarks[i] = face.kps
            out.boxes[i] = face.box
        return out

    @staticmethod
    def _tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 [H, W, 3] images -> float [N, 3, H, W] in [0, 1]."""
        return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255.0

    def attributes_of(self, images: Sequence[np.ndarray]) -> list[dict[str, str | None]]:
        """The attribute classifier's prediction of every image ({attribute: value} + class_word)."""
        return self.classifier.predict(self._tensor(images))

    @torch.no_grad()
    def clip_text(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """[N] world-CLIP text similarity of image i and prompt i."""
        unique = list(dict.fromkeys(prompts))
        text = self.clip.embed_texts(unique)
        rows = torch.stack([text[unique.index(p)] for p in prompts])
        return clip_text_similarity(self.clip.embed_images(self._tensor(images)), rows)
