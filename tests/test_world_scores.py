"""eval/world_scores.py: the identity world's scores on hand-made faces, against direct computations."""

import numpy as np
import pytest

from eval.world_scores import (
    FaceFeatures,
    bootstrap_interval,
    copy_paste,
    edit_success,
    expression_diversity,
    identity_similarity,
    pose_descriptor,
    pose_diversity,
)

LANDMARKS = np.array([[27.6, 28.6], [36.3, 28.4], [32.1, 31.9], [28.2, 34.9], [36.0, 34.8]], np.float32)


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _faces(vectors, found=None, landmarks=None) -> FaceFeatures:
    n = len(vectors)
    f = FaceFeatures.empty(n, dim=len(vectors[0]))
    for i, v in enumerate(vectors):
        f.embeddings[i] = _unit(v)
    f.found[:] = True if found is None else found
    f.embeddings[~f.found] = 0
    f.landmarks[:] = LANDMARKS if landmarks is None else landmarks
    return f


def test_identity_similarity_is_the_mean_cosine_to_references_and_zero_without_a_face():
    refs = _faces([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], found=[True, True, False])  # the third is not used
    gen = _faces([[1, 0, 0], [0, 1, 0]], found=[True, False])
    sim = identity_similarity(gen, refs)
    assert sim[0] == pytest.approx((1.0 + 0.8) / 2)
    assert sim[1] == 0.0
    assert np.isnan(identity_similarity(gen, _faces([[1, 0, 0]], found=[False]))).all()


def test_copy_paste_is_high_for_a_pasted_photo_and_about_zero_for_another_render():
    cond = _faces([[1, 0, 0], [0, 1, 0]])
    refs = _faces([[0.6, 0.8, 0], [0.8, 0.6, 0]])
    gen = _faces([[1, 0, 0], [0.7, 0.7, 0], [0, 0, 1]], found=[True, True, False])
    cp = copy_paste(gen, cond, refs)
    assert cp[0] == pytest.approx(1.0 - 0.7)  # the pasted photo: nearest 1, references 0.7 on average
    pasted_other = float(_unit([0.7, 0.7, 0]) @ _unit([1, 0, 0]))
    assert cp[1] == pytest.approx(pasted_other - float(np.mean([_unit([0.7, 0.7, 0]) @ r for r in refs.embeddings])))
    assert cp[0] > cp[1]
    assert np.isnan(cp[2])


def test_edit_success_needs_every_stated_attribute_and_a_generic_hat_is_any_hat():
    pred = [{"hat": "cap", "hat_color": "red", "scene": "snow", "glasses": "none"},
            {"hat": "none", "hat_color": None, "scene": "snow", "glasses": "none"},
            {"hat": "beanie", "hat_color": "red", "scene": "beach", "glasses": "none"}]
    wanted = [{"hat": "any", "hat_color": "red", "scene": "snow"}, {"hat": "any", "scene": "snow"},
              {"hat": "beanie", "scene": "snow"}]
    assert edit_success(pred, wanted).tolist() == [True, False, False]
    assert edit_success(pred[:1], [{}]).tolist() == [True]  # nothing asked: met
    with pytest.raises(ValueError):
        edit_success(pred, wanted[:2])


def test_pose_descriptor_ignores_position_and_scale_and_sees_turns():
    moved = LANDMARKS * 1.7 + np.array([5.0, -3.0], np.float32)
    turned = LANDMARKS.copy()
    turned[2, 0] += 2.0  # the nose to one side: a yaw
    d = pose_descriptor(np.stack([LANDMARKS, moved, turned]))
    np.testing.assert_allclose(d[0], d[1], atol=1e-5)
    assert np.abs(d[2] - d[0]).max() > 0.1
    same = np.stack([LANDMARKS] * 3)
    assert pose_diversity(same, np.ones(3, bool)) == pytest.approx(0.0)
    assert pose_diversity(np.stack([LANDMARKS, turned]), np.ones(2, bool)) > 0.1
    assert np.isnan(pose_diversity(np.stack([LANDMARKS, turned]), np.array([True, False])))


def test_expression_diversity_is_the_fraction_of_differing_pairs():
    assert expression_diversity([{"expression": "smiling"}] * 3) == 0.0
    assert expression_diversity([{"expression": "smiling"}, {"expression": "neutral"}, {"expression": "smiling"}]) \
        == pytest.approx(2 / 3)
    assert np.isnan(expression_diversity([{"expression": "smiling"}]))


def test_bootstrap_interval_brackets_the_mean_and_skips_missing_values():
    values = [0.1, 0.5, 0.3, float("nan"), None, 0.9, 0.2]
    a, b = bootstrap_interval(values, seed=1), bootstrap_interval(values, seed=1)
    assert a == b and a["n"] == 5
    assert a["mean"] == pytest.approx(np.mean([0.1, 0.5, 0.3, 0.9, 0.2]))
    assert 0.1 <= a["lo"] < a["mean"] < a["hi"] <= 0.9
    assert bootstrap_interval([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert bootstrap_interval([0.4, 0.4])["lo"] == pytest.approx(0.4)


def test_face_features_round_trip():
    f = _faces([[1, 0, 0], [0, 1, 0]], found=[True, False])
    g = FaceFeatures.from_dict(f.to_dict())
    np.testing.assert_array_equal(g.embeddings, f.embeddings)
    assert g.found.tolist() == [True, False] and len(g) == 2
