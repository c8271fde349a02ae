"""encoder.face_analysis: pack loading through insightface, the face policy, real photos.

Two set-ups:
* a stand-in pack written by eval/bench/standin_faces.py (SCRFD / ArcFace / genderage signatures), loaded
  with FaceAnalyzer.from_pack so insightface's routing and SCRFD decoding run; its detector finds
  coloured marker cells at exactly predictable places;
* real photos through facenet-pytorch's MTCNN (adapter in eval/bench/standin_faces.py) with the stand-in ArcFace.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import insightface
import numpy as np
import pytest
import skimage.data
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.attribute import Attribute
from insightface.model_zoo.scrfd import SCRFD
from PIL import Image

from encoder.align import ARCFACE_TEMPLATE_112, align_face, alignment_matrix, transform_points
from encoder.face_analysis import Face, FaceAnalyzer, FacePolicy, FaceRejected
from encoder.photos import PhotoError, load_rgb
from eval.bench.standin_faces import (
    MTCNNDetector,
    expected_detection,
    make_pack,
    paint_marker,
    reference_embedding,
    write_arcface,
    write_genderage,
    write_scrfd,
)
from models.paths import WeightsError

IMAGES = Path(insightface.__file__).parent / "data" / "images"
RED = (255, 0, 0)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return make_pack(tmp_path_factory.mktemp("buffalo_l"))


@pytest.fixture(scope="module")
def fa(pack) -> FaceAnalyzer:
    return FaceAnalyzer.from_pack(pack)


def _with(analyzer: FaceAnalyzer, **policy) -> FaceAnalyzer:
    """Same models, another policy."""
    return FaceAnalyzer(analyzer.detector, analyzer.recogniser, analyzer.attribute,
                        policy=FacePolicy(**policy))


def _canvas(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Grey noise (R = G = B, so the marker detector scores 0 everywhere)."""
    g = np.random.default_rng(seed).integers(40, 215, (h, w, 1), dtype=np.uint8)
    return np.repeat(g, 3, axis=2)


def _check_embeddings(face: Face):
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (512,)
    assert face.embedding_flip.dtype == np.float32 and face.embedding_flip.shape == (512,)
    assert abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    assert abs(np.linalg.norm(face.embedding_flip) - 1) < 1e-5
    np.testing.assert_allclose(face.embedding, reference_embedding(face.aligned), atol=1e-5)
    np.testing.assert_allclose(face.embedding_flip, reference_embedding(face.aligned[:, ::-1]), atol=1e-5)
    assert not np.allclose(face.embedding, face.embedding_flip)


# ------------------------------------------------------------------------- stand-in pack, exact
def test_from_pack_uses_insightface_models(fa):
    assert isinstance(fa.detector, SCRFD) and fa.detector.use_kps
    assert isinstance(fa.recogniser, ArcFaceONNX)
    assert isinstance(fa.attribute, Attribute) and fa.attribute.taskname == "genderage"
    assert fa.recogniser.input_mean == 127.5 and fa.recogniser.input_std == 127.5


def test_marker_detected_at_predicted_box(fa):
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, RED)
    face = fa.analyze(img)
    box, kps = expected_detection(30, 40)
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    np.testing.assert_allclose(face.kps, kps, atol=1e-3)
    assert face.box.dtype == np.float32 and face.kps.dtype == np.float32 and face.kps.shape == (5, 2)
    assert face.det_score == pytest.approx(1.0, abs=1e-6)
    assert face.n_faces == 1 and face.gender == "male" and face.age == 35.0
    assert face.aligned.shape == (112, 112, 3) and face.aligned.dtype == np.uint8
    np.testing.assert_array_equal(face.aligned, align_face(img, face.kps))
    _check_embeddings(face)


def test_box_size_and_non_square_photo(fa):
    # 1280 x 640: the detector sees it at half size, so one cell is 16 px of the photo
    img = _canvas(640, 1280)
    paint_marker(img, 12, 50, (255, 0, 255), scale=2)  # blue 255: a face twice as big
    face = fa.analyze(img)
    box, kps = expected_detection(12, 50, blue=255, scale=2)
    np.testing.assert_allclose(face.box, box, atol=1e-2)
    np.testing.assert_allclose(face.kps, kps, atol=1e-2)
    assert face.size == pytest.approx(2 * 2 * 64, abs=0.1)


@pytest.mark.parametrize("max_side", [1280, 1600, 4000])
def test_downscaled_detection_reports_original_coordinates(fa, max_side):
    img = _canvas(1280, 2560, seed=3)  # fine noise: a crop of a downscaled copy would differ
    paint_marker(img, 20, 60, RED, scale=4)
    face = _with(fa, max_side=max_side).analyze(img)
    box, kps = expected_detection(20, 60, scale=4)
    np.testing.assert_allclose(face.box, box, atol=0.05)
    np.testing.assert_allclose(face.kps, kps, atol=0.05)
    # aligned on the full-resolution photo
    np.testing.assert_array_equal(face.aligned, align_face(img, face.kps))
    small = img[::2, ::2]
    assert np.abs(align_face(small, face.kps / 2).astype(int) - face.aligned.astype(int)).mean() > 5


def test_policy_min_face_size(fa):
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, RED)
    with pytest.raises(FaceRejected) as e:
        _with(fa, min_face_size=100).analyze(img)
    assert e.value.reason == "face too small (64 px < 100)"
    assert _with(fa, min_face_size=64).analyze(img).size == pytest.approx(64)
    # a 160 px photo is upscaled 4x for detection: its face is 16 px of the photo
    tiny = np.zeros((160, 160, 3), np.uint8)  # black: blue 0 also where the upscaled marker blurs
    tiny[16:18, 16:18] = RED  # the block that becomes cell (8, 8) at 4x
    with pytest.raises(FaceRejected, match=r"face too small \(16 px < 32\)"):
        fa.analyze(tiny)


def test_policy_min_det_score(fa):
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, (200, 121, 0))  # score (200 - 121) / 255 = 0.31
    with pytest.raises(FaceRejected) as e:
        fa.analyze(img)
    assert e.value.reason == "detection score 0.31 < 0.5"
    face = _with(fa, min_det_score=0.3).analyze(img)
    assert face.det_score == pytest.approx(79 / 255, abs=1e-4)
    with pytest.raises(FaceRejected, match="^no face detected$"):
        fa.analyze(_canvas(640, 640))
    assert fa.analyze_all(_canvas(640, 640)) == []


def test_several_faces_largest_or_first(fa):
    img = _canvas(640, 640)
    paint_marker(img, 10, 10, RED)  # score 1.0, 64 x 80
    paint_marker(img, 50, 50, (255, 64, 255))  # score 0.75, twice the size
    paint_marker(img, 70, 10, (200, 121, 0))  # 0.31: a candidate below the threshold
    small_box, _ = expected_detection(10, 10)
    big_box, _ = expected_detection(50, 50, blue=255)
    largest = fa.analyze(img)
    np.testing.assert_allclose(largest.box, big_box, atol=1e-3)
    assert largest.n_faces == 2 and largest.det_score == pytest.approx(191 / 255, abs=1e-4)
    first = _with(fa, select="first").analyze(img)
    np.testing.assert_allclose(first.box, small_box, atol=1e-3)
    faces = fa.analyze_all(img)
    assert [round(f.det_score, 2) for f in faces] == [1.0, 0.75]
    for f in faces:
        assert f.n_faces == 2
        _check_embeddings(f)
    assert not np.allclose(faces[0].embedding, faces[1].embedding)
    # the small one is dropped by a size policy, the big one stays
    only_big = _with(fa, min_face_size=100).analyze_all(img)
    assert len(only_big) == 1 and only_big[0].n_faces == 2
    # one dominant face (corpora): the other face has 1/4 of the largest's area
    assert fa.analyze(img, max_other_face=0.3).n_faces == 2
    with pytest.raises(FaceRejected, match="several faces: another is 25% of the main face's area"):
        fa.analyze(img, max_other_face=0.2)


def test_policy_validation():
    with pytest.raises(ValueError):
        FacePolicy(select="biggest")


def test_exif_rotated_copy_found_at_rotated_position(fa, tmp_path):
    shown = _canvas(480, 640)
    paint_marker(shown, 20, 60, RED)
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # a camera held sideways; the tag fixes it
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "sideways.png", exif=exif)
    face = fa.analyze_file(tmp_path / "sideways.png")
    box, _ = expected_detection(20, 60)
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    # without the tag the marker sits elsewhere
    Image.fromarray(stored).save(tmp_path / "untagged.png")
    assert not np.allclose(fa.analyze_file(tmp_path / "untagged.png").box, box, atol=5)


def test_analyze_folder(fa, tmp_path, caplog):
    one = _canvas(640, 640)
    paint_marker(one, 30, 40, RED)
    two = _canvas(640, 640, seed=1)
    paint_marker(two, 10, 10, RED)
    paint_marker(two, 50, 50, (255, 64, 255))
    Image.fromarray(one).save(tmp_path / "a.png")
    Image.fromarray(two).save(tmp_path / "b.PNG")
    Image.fromarray(_canvas(640, 640)).save(tmp_path / "c_noface.jpg")
    (tmp_path / "d_text.jpg").write_text("not a photo")
    Image.new("RGB", (1, 1)).save(tmp_path / "e_dot.png")
    Image.fromarray(one).save(tmp_path / ".hidden.png")
    with caplog.at_level(logging.WARNING, logger="encoder.face_analysis"):
        res = fa.analyze_folder(tmp_path)
    assert [p.name for p, _ in res.faces] == ["a.png", "b.PNG"]
    assert [(p.name, r) for p, r in res.skipped] == [
        (".hidden.png", "hidden file"), ("c_noface.jpg", "no face detected"), ("d_text.jpg", "not an image file"),
        ("e_dot.png", "image too small (1x1)")]
    assert [p.name for p, _ in res.notes] == ["b.PNG"] and "2 faces" in res.notes[0][1]
    assert any("b.PNG" in r.message and "largest" in r.message for r in caplog.records)
    np.testing.assert_allclose(res.faces[1][1].box, expected_detection(50, 50, blue=255)[0], atol=1e-3)


def test_analyze_folder_empty_missing_and_progress(fa, tmp_path, capsys):
    res = fa.analyze_folder(tmp_path)
    assert res.faces == [] and res.skipped == []
    with pytest.raises(PhotoError, match="photo folder not found"):
        fa.analyze_folder(tmp_path / "missing")
    with pytest.raises(PhotoError):
        fa.analyze_file(tmp_path / "missing.jpg")
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, RED)
    Image.fromarray(img).save(tmp_path / "a.png")
    assert len(fa.analyze_folder(tmp_path, progress=True).faces) == 1


def test_input_checks(fa):
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, RED)
    rgba = np.concatenate([img, np.full((640, 640, 1), 255, np.uint8)], axis=2)
    np.testing.assert_allclose(fa.analyze(rgba).box, expected_detection(30, 40)[0], atol=1e-3)
    with pytest.raises(TypeError):
        fa.analyze(img.astype(np.float32))
    with pytest.raises(ValueError):
        fa.analyze(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(FaceRejected, match=r"aspect ratio too extreme \(2000x1\)"):
        fa.analyze(np.zeros((1, 2000, 3), np.uint8))


# ------------------------------------------------------------------------------------ pack errors
def test_missing_pack_folder(tmp_path):
    with pytest.raises(WeightsError) as e:
        FaceAnalyzer.from_pack(tmp_path / "antelopev2")
    msg = str(e.value)
    assert str(tmp_path / "antelopev2") in msg and "does not exist" in msg
    assert "antelopev2" in msg and "buffalo_l" in msg and "checkpoints/" in msg


def test_pack_without_detector_or_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no .onnx files"):
        FaceAnalyzer.from_pack(tmp_path / "empty")
    pack = make_pack(tmp_path / "half", detector=None)
    with pytest.raises(WeightsError) as e:
        FaceAnalyzer.from_pack(pack)
    msg = str(e.value)
    assert "face detector" in msg and "w600k_r50.onnx (recogniser)" in msg
    assert "genderage.onnx (genderage)" in msg and "ArcFace" not in msg.split("found:")[0]
    pack = make_pack(tmp_path / "norec", recogniser=None, genderage=None)
    with pytest.raises(WeightsError, match="ArcFace recogniser"):
        FaceAnalyzer.from_pack(pack)


def test_antelopev2_layout_with_extra_files(tmp_path):
    inner = tmp_path / "antelopev2" / "antelopev2"  # how antelopev2.zip unpacks
    write_scrfd(inner / "scrfd_10g_bnkps.onnx")
    write_arcface(inner / "glintr100.onnx")
    write_genderage(inner / "genderage.onnx", gender="female", age=27)
    (inner / "2d106det.onnx").write_bytes(b"landmark models are skipped, never loaded")
    (inner / "zz_broken.onnx").write_bytes(b"not onnx")
    fa = FaceAnalyzer.from_pack(tmp_path / "antelopev2", providers=["CPUExecutionProvider"])
    img = _canvas(640, 640)
    paint_marker(img, 30, 40, RED)
    face = fa.analyze(img)
    assert face.gender == "female" and face.age == 27.0
    np.testing.assert_allclose(face.box, expected_detection(30, 40)[0], atol=1e-3)


# ------------------------------------------------------------------------------------ real photos
@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    pytest.importorskip("facenet_pytorch")
    return MTCNNDetector()


@pytest.fixture(scope="module")
def real(mtcnn, fa) -> FaceAnalyzer:
    return FaceAnalyzer(mtcnn, fa.recogniser, fa.attribute)


@pytest.mark.filterwarnings("ignore:.*estimate.*:FutureWarning")  # insightface's norm_crop, newer skimage
def test_astronaut(real, mtcnn):
    img = skimage.data.astronaut()
    face = real.analyze(img)
    assert face.n_faces == 1 and face.det_score > 0.99
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < 210 and 40 < y1 < 90 and 240 < x2 < 300 and 150 < y2 < 200  # her face
    assert face.gender == "male" and face.age == 35.0  # the stand-in genderage model's constant
    _check_embeddings(face)
    # the same embedding as insightface's own crop + embed path (what the competition's scorer runs)
    from insightface.app.common import Face as InsightFace

    theirs = real.recogniser.get(np.ascontiguousarray(img[:, :, ::-1]), InsightFace(kps=face.kps))
    np.testing.assert_allclose(face.embedding, theirs / np.linalg.norm(theirs), atol=1e-5)
    # the landmarks land on the template, and the crop is a face whose own landmarks match it
    np.testing.assert_allclose(transform_points(face.kps, alignment_matrix(face.kps)),
                               ARCFACE_TEMPLATE_112, atol=8)
    big = np.asarray(Image.fromarray(face.aligned).resize((224, 224), Image.BICUBIC))
    dets, kps = mtcnn.detect(big[:, :, ::-1])
    assert len(dets) >= 1
    assert np.abs(kps[0] / 2 - ARCFACE_TEMPLATE_112).max() < 10


def test_tom_hanks_aligned_photo(real):
    img = load_rgb(IMAGES / "Tom_Hanks_54745.png")  # already a 112 x 112 ArcFace crop
    face = real.analyze(img)
    assert face.n_faces == 1
    assert np.abs(face.kps - ARCFACE_TEMPLATE_112).max() < 10
    _check_embeddings(face)


def test_group_photo_largest_face_and_warning(real, tmp_path, caplog):
    img = load_rgb(IMAGES / "t1.jpg")
    faces = real.analyze_all(img)
    assert len(faces) >= 5
    largest = real.analyze(img)
    assert largest.n_faces >= len(faces)
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    np.testing.assert_allclose(largest.box, faces[int(np.argmax(areas))].box)
    first = FaceAnalyzer(real.detector, real.recogniser, policy=FacePolicy(select="first")).analyze(img)
    assert first.det_score == max(f.det_score for f in faces)
    assert first.gender is None and first.age is None
    # every face is a different crop
    emb = np.stack([f.embedding for f in faces])
    sims = emb @ emb.T
    assert (sims[~np.eye(len(faces), dtype=bool)] < 0.999).all()

    shutil.copy(IMAGES / "t1.jpg", tmp_path / "group.jpg")
    shutil.copy(IMAGES / "Tom_Hanks_54745.png", tmp_path / "hanks.png")
    with caplog.at_level(logging.WARNING, logger="encoder.face_analysis"):
        res = real.analyze_folder(tmp_path)
    assert [p.name for p, _ in res.faces] == ["group.jpg", "hanks.png"] and res.skipped == []
    assert [p.name for p, _ in res.notes] == ["group.jpg"]
    assert any("group.jpg" in r.message and "faces detected" in r.message for r in caplog.records)


def test_exif_rotated_real_photo(real, tmp_path):
    shown = skimage.data.astronaut()
    expected = real.analyze(shown)
    im = Image.fromarray(np.ascontiguousarray(np.rot90(shown, -1)))  # stored rotated, tag 8 undoes it
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    face = real.analyze_file(tmp_path / "rotated.jpg")
    np.testing.assert_allclose(face.box, expected.box, atol=6)


def test_real_photos_without_faces(real, tmp_path):
    for name in ("coffee", "chelsea", "rocket"):  # a cup, a cat, a launch pad
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.jpg", quality=95)
    res = real.analyze_folder(tmp_path)
    assert res.faces == []
    assert [(p.name, r) for p, r in res.skipped] == [
        ("chelsea.jpg", "no face detected"), ("coffee.jpg", "no face detected"),
        ("rocket.jpg", "no face detected")]


def test_real_photo_min_size(real):
    img = skimage.data.astronaut()
    with pytest.raises(FaceRejected, match=r"^face too small \(\d+ px < 200\)$"):
        FaceAnalyzer(real.detector, real.recogniser, policy=FacePolicy(min_face_size=200)).analyze(img)
