"""Identity metrics the field reports beyond the competition's numbers.

All work on what the scorer already computed (eval/competition_scorer.py keeps each image's face and CLIP
embeddings in memory), so they cost no extra model calls:

* detection rate: the share of generated images (expected files, missing ones included) in which
  the competition's face model finds a face;
* identity similarity by face size: the face score (max cosine to the references, clipped at 0)
  grouped by the shorter side of the detected face box in pixels of the generated image;
* copy-paste: for each generated face, its similarity to the closest reference against its mean
  similarity to the person's other references. A model that reproduces one photo scores a large
  gap; an identity model that captures the person should stay near the gap the references
  themselves show (each reference against the others, `reference_gap`);
* diversity: over the images of one prompt, 1 - mean pairwise cosine of CLIP image embeddings
  and of face embeddings (0 = identical images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from eval.competition_scorer import References, ScoreReport, TaskScore

SIZE_EDGES = (0.0, 64.0, 128.0, 256.0, float("inf"))  # face box shorter side, pixels


def _unit(x: np.ndarray) -> np.ndarray:
    """[N, D] rows L2-normalised (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def detection_rate(found: Sequence[bool]) -> float:
    """Share of images with a detected face: [N] bools -> float in [0, 1] (NaN for no images)."""
    return float(np.mean(np.asarray(found, dtype=np.float64))) if len(found) else float("nan")


@dataclass(frozen=True)
class SizeBucket:
    label: str  # "64-128" (pixels, lower edge included)
    low: float
    high: float
    count: int
    mean_similarity: float  # NaN when empty


def _bucket_label(low: float, high: float) -> str:
    if low <= 0:
        return f"<{high:g}"
    if np.isinf(high):
        return f">={low:g}"
    return f"{low:g}-{high:g}"


def similarity_by_face_size(sizes: Sequence[float], sims: Sequence[float],
                            edges: Sequence[float] = SIZE_EDGES) -> list[SizeBucket]:
    """sizes [N] (face box shorter side, px), sims [N] -> one bucket per [edges[i], edges[i+1])."""
    sizes_a, sims_a = np.asarray(sizes, np.float64), np.asarray(sims, np.float64)
    if sizes_a.shape != sims_a.shape:
        raise ValueError(f"{sizes_a.shape[0]} sizes but {sims_a.shape[0]} similarities")
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        m = (sizes_a >= low) & (sizes_a < high)
        out.append(SizeBucket(_bucket_label(low, high), float(low), float(high), int(m.sum()),
                              float(sims_a[m].mean()) if m.any() else float("nan")))
    return out


@dataclass(frozen=True)
class CopyPaste:
    closest: float  # mean over generated faces of the max cosine to a reference
    others: float  # mean over generated faces of the mean cosine to the other references
    gap: float  # closest - others
    reference_gap: float  # the same gap among the references (each against the rest); NaN if < 3
    excess: float  # gap - reference_gap: how much more the outputs favour one photo than photos do
    dominant_share: float  # share of generated faces whose closest reference is the most common one
    count: int


def _gap(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sims [N, R] -> (closest [N], mean of the others [N], argmax [N])."""
    idx = sims.argmax(axis=1)
    closest = sims[np.arange(len(sims)), idx]
    others = (sims.sum(axis=1) - closest) / (sims.shape[1] - 1)
    return closest, others, idx


def copy_paste(generated: np.ndarray, references: np.ndarray) -> CopyPaste | None:
    """generated [N, D] face embeddings, references [R, D] of the same person -> CopyPaste.

    None when there is no generated face or fewer than 2 references (no "other" reference).
    """
    generated, references = np.asarray(generated), np.asarray(references)
    if generated.ndim != 2 or len(generated) == 0 or references.ndim != 2 or len(references) < 2:
        return None
    g, r = _unit(generated), _unit(references)
    closest, others, idx = _gap(g @ r.T)
    ref_gap = float("nan")
    if len(r) >= 3:
        rr = r @ r.T
        loo = np.stack([np.delete(rr[i], i) for i in range(len(r))])  # [R, R-1] each vs the others
        c_r, o_r, _ = _gap(loo)
        ref_gap = float(np.mean(c_r - o_r))
    gap = float(np.mean(closest - others))
    counts = np.bincount(idx, minlength=len(r))
    return CopyPaste(closest=float(closest.mean()), others=float(others.mean()), gap=gap,
                     reference_gap=ref_gap, excess=gap - ref_gap, dominant_share=float(counts.max() / len(idx)),
                     count=len(g))


def pairwise_diversity(embeddings: np.ndarray) -> float:
    """[M, D] embeddings of one prompt's images -> 1 - mean pairwise cosine (NaN when M < 2)."""
    e = np.asarray(embeddings)
    if e.ndim != 2 or len(e) < 2:
        return float("nan")
    u = _unit(e)
    sims = u @ u.T
    iu = np.triu_indices(len(u), k=1)
    return float(1.0 - sims[iu].mean())


def _nanmean(values: Sequence[float]) -> float:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def task_metrics(task: TaskScore, refs: References, edges: Sequence[float] = SIZE_EDGES) -> dict:
    """All four metrics for one scored task (its images and its identity's references)."""
    images = task.images
    faces = [im for im in images if im.face_found]
    buckets = similarity_by_face_size([im.face_size for im in faces], [im.face for im in faces], edges)
    cp = copy_paste(np.stack([im.face_embedding for im in faces]) if faces else np.zeros((0, 0)), refs.face)
    div_clip, div_face = [], []
    for p in task.prompts:
        clip = [im.clip_embedding for im in p.images if im.clip_embedding is not None]
        face = [im.face_embedding for im in p.images if im.face_embedding is not None]
        div_clip.append(pairwise_diversity(np.stack(clip)) if len(clip) >= 2 else float("nan"))
        div_face.append(pairwise_diversity(np.stack(face)) if len(face) >= 2 else float("nan"))
    return {
        "images": len(images),
        "faces_detected": len(faces),
        "detection_rate": detection_rate([im.face_found for im in images]),
        "face_size_buckets": [asdict(b) for b in buckets],
        "copy_paste": None if cp is None else asdict(cp),
        "diversity_clip": _nanmean(div_clip),
        "diversity_face": _nanmean(div_face),
    }


def report_metrics(report: ScoreReport, edges: Sequence[float] = SIZE_EDGES) -> dict:
    """{"tasks": {task: task_metrics}, "overall": pooled detection rate and size buckets, mean of the rest}."""
    per_task = {t.task: task_metrics(t, report.references[t.identity], edges) for t in report.tasks}
    images = [im for t in report.tasks for im in t.images]
    faces = [im for im in images if im.face_found]
    cps = [m["copy_paste"] for m in per_task.values() if m["copy_paste"]]
    overall = {
        "images": len(images),
        "faces_detected": len(faces),
        "detection_rate": detection_rate([im.face_found for im in images]),
        "face_size_buckets": [asdict(b) for b in similarity_by_face_size(
            [im.face_size for im in faces], [im.face for im in faces], edges)],
        "copy_paste_gap": _nanmean([c["gap"] for c in cps]),
        "copy_paste_excess": _nanmean([c["excess"] for c in cps]),
        "diversity_clip": _nanmean([m["diversity_clip"] for m in per_task.values()]),
        "diversity_face": _nanmean([m["diversity_face"] for m in per_task.values()]),
    }
    return {"tasks": per_task, "overall": overall}


def metrics_table(metrics: dict) -> str:
    """One row per task: detection rate, copy-paste gap / excess, diversity (CLIP, face)."""
    from eval.tables import format_table

    rows = []
    for name, m in list(metrics["tasks"].items()) + [("overall", metrics["overall"])]:
        cp = m.get("copy_paste")
        gap = cp["gap"] if cp else m.get("copy_paste_gap")
        excess = cp["excess"] if cp else m.get("copy_paste_excess")
        rows.append((name, m["detection_rate"], gap, excess, m["diversity_clip"], m["diversity_face"]))
    table = format_table(rows, ["task", "det_rate", "cp_gap", "cp_excess", "div_clip", "div_face"])
    buckets = metrics["overall"]["face_size_buckets"]
    size_rows = [(b["label"], b["count"], b["mean_similarity"]) for b in buckets]
    return table + "\n\nface score by face size (shorter box side, px; all tasks)\n" + format_table(
        size_rows, ["size", "faces", "face"])
