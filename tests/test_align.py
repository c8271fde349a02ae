"""encoder.align: Umeyama similarity fit and the 5-point ArcFace alignment."""

from __future__ import annotations

from pathlib import Path

import cv2
import insightface
import numpy as np
import pytest
from PIL import Image
from skimage.transform import SimilarityTransform

from encoder.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    alignment_matrix,
    arcface_template,
    similarity_transform,
    transform_points,
)

HANKS = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx],
                     [scale * np.sin(a), scale * np.cos(a), ty]])


def test_recovers_exact_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (5, 2))
    for angle, scale in [(0, 1), (37, 0.4), (-120, 2.5), (180, 1.3)]:
        m = _similarity(angle, scale, 12.5, -40.0)
        dst = transform_points(src, m)
        np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)


def test_least_squares_matches_skimage_on_noisy_points():
    rng = np.random.default_rng(1)
    for _ in range(5):
        src = rng.uniform(0, 500, (5, 2))
        dst = transform_points(src, _similarity(rng.uniform(-60, 60), rng.uniform(0.2, 3), 5, 9))
        dst += rng.normal(0, 3, dst.shape)
        if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            t = SimilarityTransform.from_estimate(src, dst)
        else:
            t = SimilarityTransform()
            t.estimate(src, dst)
        np.testing.assert_allclose(similarity_transform(src, dst), t.params[:2], atol=1e-8)


def test_never_reflects():
    src = ARCFACE_TEMPLATE_112.astype(np.float64)
    mirrored = src * [-1, 1]  # a mirror image is not reachable by a similarity
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_bad_input():
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))  # all source points equal
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        similarity_transform(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        alignment_matrix(np.zeros((4, 2)))


def test_templates():
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE_112 * 2)
    np.testing.assert_allclose(arcface_template(128), ARCFACE_TEMPLATE_112 * [1, 1] + [8, 0])
    with pytest.raises(ValueError):
        arcface_template(100)


def test_template_landmarks_give_the_same_crop():
    crop = np.asarray(Image.open(HANKS).convert("RGB"))
    assert crop.shape == (112, 112, 3)
    np.testing.assert_allclose(alignment_matrix(ARCFACE_TEMPLATE_112), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    np.testing.assert_array_equal(align_face(crop, ARCFACE_TEMPLATE_112), crop)


@pytest.mark.parametrize("angle,scale", [(30, 1.7), (-75, 3.0), (160, 0.9)])
def test_rotated_scaled_copy_aligns_back(angle, scale):
    crop = np.asarray(Image.open(HANKS).convert("RGB"))
    m = _similarity(angle, scale, 0, 0)
    # place the crop's centre at (300, 260) of a 600 x 520 canvas
    m[:, 2] = np.array([300, 260]) - m[:, :2] @ np.array([56, 56])
    canvas = cv2.warpAffine(crop, m, (600, 520), flags=cv2.INTER_CUBIC)
    kps = transform_points(ARCFACE_TEMPLATE_112, m)
    back = align_face(canvas, kps)
    assert back.shape == (112, 112, 3) and back.dtype == np.uint8
    np.testing.assert_allclose(alignment_matrix(kps)[:, :2], np.linalg.inv(m[:, :2]), atol=1e-9)
    inner = (slice(12, 100), slice(12, 100))  # borders lose pixels to rotation
    diff = np.abs(back[inner].astype(int) - crop[inner].astype(int))
    assert diff.mean() < (1.5 if scale >= 1 else 4)  # a 3 px landmark shift gives 6 to 17


def test_channels_kept_and_size():
    img = np.zeros((300, 300, 3), np.uint8)
    img[..., 2] = 255
    kps = ARCFACE_TEMPLATE_112 * 2 + 20
    out = align_face(img, kps, size=224)
    assert out.shape == (224, 224, 3) and (out[100, 100] == (0, 0, 255)).all()
    gray = align_face(img[..., 2], kps)
    assert gray.shape == (112, 112)
