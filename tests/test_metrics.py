"""eval.metrics: detection rate, similarity by face size, copy-paste, diversity, on hand-made numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.competition_scorer import ImageScore, PromptScore, References, ScoreConfig, ScoreReport, TaskScore
from eval.metrics import (
    copy_paste,
    detection_rate,
    metrics_table,
    pairwise_diversity,
    report_metrics,
    similarity_by_face_size,
    task_metrics,
)

E = np.eye(4)


def test_detection_rate():
    assert detection_rate([True, False, True, True]) == 0.75
    assert np.isnan(detection_rate([]))


def test_similarity_by_face_size():
    buckets = similarity_by_face_size([10, 63.9, 64, 200, 300, 1000], [0.1, 0.3, 0.5, 0.6, 0.7, 0.9])
    assert [b.label for b in buckets] == ["<64", "64-128", "128-256", ">=256"]
    assert [b.count for b in buckets] == [2, 1, 1, 2]
    assert [b.mean_similarity for b in buckets] == pytest.approx([0.2, 0.5, 0.6, 0.8])
    custom = similarity_by_face_size([5, 50], [1.0, 0.0], edges=(0, 20, 40))
    assert custom[1].count == 0 and np.isnan(custom[1].mean_similarity)
    with pytest.raises(ValueError):
        similarity_by_face_size([1, 2], [0.5])


def test_copy_paste():
    refs = E[:3] * 2.0  # orthogonal references (unnormalised on purpose)
    copy = copy_paste(E[[0, 0]], refs)
    assert (copy.closest, copy.others, copy.gap) == pytest.approx((1.0, 0.0, 1.0))
    assert copy.reference_gap == pytest.approx(0.0) and copy.excess == pytest.approx(1.0)
    assert copy.dominant_share == 1.0 and copy.count == 2
    blend = copy_paste(np.ones((1, 4)) - E[3], refs)  # equally close to all three references
    assert blend.gap == pytest.approx(0.0) and blend.closest == pytest.approx(1 / np.sqrt(3))
    # references that are not orthogonal: r0.r1 = 0.8, r0.r2 = r1.r2 = 0
    r = np.array([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1.0, 0]])
    cp = copy_paste(np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]), r)
    # generated 0: sims (1, 0.8, 0) -> gap 1 - 0.4; generated 1: sims (0, 0, 1) -> gap 1 - 0
    assert cp.gap == pytest.approx(((1 - 0.4) + 1.0) / 2)
    # references leave-one-out: r0 (0.8, 0) -> 0.8; r1 (0.8, 0) -> 0.8; r2 (0, 0) -> 0
    assert cp.reference_gap == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    assert cp.dominant_share == 0.5
    assert copy_paste(E[[0]], E[[0]]) is None and copy_paste(np.zeros((0, 4)), refs) is None
    assert np.isnan(copy_paste(E[[0]], E[:2]).reference_gap)


def test_pairwise_diversity():
    assert pairwise_diversity(np.stack([E[0], E[0], 3 * E[0]])) == pytest.approx(0.0)
    assert pairwise_diversity(E[:3]) == pytest.approx(1.0)
    v = np.array([[1.0, 0], [0.6, 0.8], [0, 1.0]])  # pairwise cosines 0.6, 0, 0.8
    assert pairwise_diversity(v) == pytest.approx(1 - (0.6 + 0.0 + 0.8) / 3)
    assert np.isnan(pairwise_diversity(E[:1]))


def _image(name, face=None, clip=None, size=None, refs=None):
    s = ImageScore(file=name, status="ok" if clip is not None else "missing")
    if clip is not None:
        s.clip_embedding = clip
    if face is not None:
        s.face_found, s.face_embedding, s.face_size = True, face, size
        s.face_sims = refs @ face
        s.face = max(0.0, float(s.face_sims.max()))
    return s


def test_task_and_report_metrics():
    refs_face = E[:2]
    refs = References("p", Path("."), ["a.jpg", "b.jpg"], clip=E[:1], face_files=["a.jpg", "b.jpg"], face=refs_face)
    prompt0 = PromptScore(0, "a", [_image("0-000", E[0], E[0], 50, refs_face),
                                   _image("0-001", E[0], E[1], 100, refs_face), _image("0-002", None, E[2])])
    prompt1 = PromptScore(1, "b", [_image("1-000", E[1], E[0], 300, refs_face), _image("1-001"), _image("1-002")])
    task = TaskScore("p", "p", "plain", "p.json", "out/p", [prompt0, prompt1])
    m = task_metrics(task, refs)
    assert m["images"] == 6 and m["faces_detected"] == 3 and m["detection_rate"] == 0.5
    sizes = {b["label"]: (b["count"], b["mean_similarity"]) for b in m["face_size_buckets"]}
    assert sizes["<64"] == (1, 1.0) and sizes["64-128"] == (1, 1.0) and sizes[">=256"] == (1, 1.0)
    assert m["copy_paste"]["gap"] == pytest.approx(1.0) and m["copy_paste"]["dominant_share"] == pytest.approx(2 / 3)
    # prompt 0: CLIP E0, E1, E2 -> diversity 1; faces E0, E0 -> 0. prompt 1: one image only -> NaN, skipped
    assert m["diversity_clip"] == pytest.approx(1.0) and m["diversity_face"] == pytest.approx(0.0)
    report = ScoreReport([task], {"p": refs}, ScoreConfig())
    rm = report_metrics(report)
    assert rm["tasks"]["p"]["detection_rate"] == 0.5 and rm["overall"]["copy_paste_gap"] == pytest.approx(1.0)
    table = metrics_table(rm)
    assert "overall" in table and "det_rate" in table and ">=256" in table
