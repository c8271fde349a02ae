"""pretrain.world.faces: the face world's recognisers and detector, their exports, pack.json and verification.

The tiny stages train for a few steps on the CPU (resumed once), so the models are untrained: the
tests check the plumbing (insightface routing and decoding, alignment shared with encoder/align.py,
the pack policy, resumption) with exact or near-exact expectations, not the models' quality.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as TF
from insightface.model_zoo import model_zoo
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD

from encoder.align import align_face, alignment_matrix
from encoder.face_analysis import PACK_JSON, FaceAnalyzer, FacePolicy, pack_policy
from eval.bench.standin_faces import make_pack
from models.paths import WeightsError, file_sha256, find_weights
from pretrain.world import faces as F
from pretrain.world.common import StageOptions, run_stage

SEED = 0


def _opts(root: Path, **kw) -> StageOptions:
    return StageOptions(out=root / "runs", world=root / "world", device=torch.device("cpu"), tiny=True, log_every=1,
                        seed=SEED, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Each face stage run for 2 of its 4 tiny steps, then resumed to the end (which exports)."""
    root = tmp_path_factory.mktemp("faceworld")
    runs, stages = {}, {}
    for cls in (F.RecogniserStage, F.DetectorStage, F.EvalRecogniserStage):
        first = run_stage(cls(_opts(root, max_steps=2)))
        stages[cls.name] = cls(_opts(root))
        runs[cls.name] = (first, run_stage(stages[cls.name]))
    return root, runs, stages


@pytest.fixture(scope="module")
def photos():
    """Two test identities, two photos each: uint8 [4, 64, 64, 3], labels [4], landmarks [4, 5, 2]."""
    return F.render_test_photos(SEED, 2, 2)


class TruthDetector:
    """insightface's detector interface answering the renderer's box and landmarks for known photos."""

    def __init__(self, photos: np.ndarray, landmarks: np.ndarray):
        self.truth = {p[:, :, ::-1].tobytes(): k for p, k in zip(photos, landmarks, strict=True)}

    def detect(self, img_bgr, input_size=None, max_num=0):
        kps = self.truth.get(np.ascontiguousarray(img_bgr).tobytes())
        if kps is None:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        box = np.concatenate([kps.min(0) - 6, kps.max(0) + 6, [0.99]]).astype(np.float32)
        return box[None], kps[None].astype(np.float32)


# ------------------------------------------------------------------------------------------ stages
def test_stages_resume_and_export(world):
    root, runs, _ = world
    for name, (first, second) in runs.items():
        assert first["step"] == 2 and not first["done"] and first["exported"] == [], name
        assert second["steps_run"] == 2 and second["step"] == 4 and second["done"], name
        assert second["exported"] and all(p.is_file() for p in second["exported"]), name
    for rel in ("faces/recogniser.onnx", "faces/detector.onnx", "faces/pack.json", "eval_faces/recogniser.onnx",
                "eval_faces/pack.json"):
        assert (root / "world" / rel).is_file(), rel
    for f in (root / "runs").rglob("*"):
        if f.is_file():
            assert f.stat().st_size < 16 * 2**20, f


def test_finished_stage_reruns_without_training(world):
    root, _, _ = world
    again = run_stage(F.RecogniserStage(_opts(root)))
    assert again["done"] and again["steps_run"] == 0 and again["exported"] == []


def test_stages_are_registered():
    from pretrain.world.__main__ import STAGES, stage_class

    assert stage_class("faces") is F.RecogniserStage
    assert stage_class("face_detector") is F.DetectorStage
    assert stage_class("eval_faces") is F.EvalRecogniserStage
    assert {"faces", "face_detector", "eval_faces"} <= set(STAGES)


def test_evaluation_recogniser_differs(world):
    assert F.EVALUATION.net.block != F.CONDITIONING.net.block
    assert F.EVALUATION.first_identity >= F.CONDITIONING.first_identity + F.CONDITIONING.classes
    assert F._init_seed(SEED, "faces") != F._init_seed(SEED, "eval_faces")


# ----------------------------------------------------------------------------- the exported pack
def test_pack_loads_through_insightface_with_its_policy(world):
    root, _, _ = world
    fa = F.load_world_analyzer(root / "world")
    assert isinstance(fa.detector, SCRFD) and fa.detector.use_kps and fa.detector._num_anchors == 2
    assert isinstance(fa.recogniser, ArcFaceONNX) and fa.recogniser.input_size == (112, 112)
    assert fa.recogniser.input_mean == 127.5 and fa.recogniser.input_std == 127.5
    assert (fa.policy.det_size, fa.policy.min_face_size, fa.policy.min_det_score) == (64, 12, 0.5)
    pack = root / "world" / "faces"
    assert fa.face_model["recognition_file"] == "recogniser.onnx"
    assert fa.face_model["recognition_sha256"] == file_sha256(pack / "recogniser.onnx")
    assert fa.face_model["embedding_size"] == 512 and fa.face_model["alignment"]["size"] == 112
    assert find_weights("face_pack", root=root / "world") == pack
    ev = F.load_world_analyzer(root / "world", "evaluation")
    assert Path(ev.recogniser.model_file).parent.name == "eval_faces" and ev.detector is not None


def test_rendered_photo_gives_embeddings_of_the_trained_net(world, photos):
    """A 64 x 64 render through FaceAnalyzer: 512-d unit embeddings, the training crop, the torch net's output."""
    root, _, stages = world
    images, _, kps = photos
    pack = F.load_world_analyzer(root / "world")
    fa = FaceAnalyzer(TruthDetector(images, kps), pack.recogniser, policy=pack.policy)
    face = fa.analyze(images[0])
    assert face.embedding.shape == (512,) and abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    train_crop = F.aligned_crops(torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float(), torch.from_numpy(kps[:1]))
    train_crop = train_crop[0].permute(1, 2, 0).numpy()
    assert np.abs(train_crop - face.aligned).max() <= 1.0  # cv2 rounds to whole levels
    net = stages["faces"].net.eval()
    x = torch.from_numpy(face.aligned).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        ref = net.embed((x - 127.5) / 127.5)[0].numpy()
    assert float(ref @ face.embedding) > 0.999  # fp16 weights in the file


def test_detector_runs_on_a_rendered_photo(world, photos):
    """The tiny detector is untrained; its ONNX file still runs at det size 64 through the analyzer."""
    root, _, _ = world
    fa = F.load_world_analyzer(root / "world")
    dets = fa.detect(photos[0][0])
    assert all(d.kps.shape == (5, 2) and np.isfinite(d.box).all() for d in dets)


def test_evaluate_recogniser_reports(world, photos):
    root, _, _ = world
    images, labels, kps = photos
    pack = F.load_world_analyzer(root / "world")
    fa = FaceAnalyzer(TruthDetector(images, kps), pack.recogniser, policy=pack.policy)
    report = F.evaluate_recogniser(fa, images, labels, kps)
    assert report["detected"] == 1.0 and report["landmark_error_px"] < 1e-4
    assert report["photos"] == 4 and report["identities"] == 2
    for key in ("recogniser", "colour_histogram"):
        assert 0.0 <= report[key]["tar"] <= 1.0
        assert report[key]["same"]["pairs"] == 2 and report[key]["different"]["pairs"] == 4
    json.dumps(report)  # JSON-able as it is


# ---------------------------------------------------------------------------------------- export
def test_recogniser_export_matches_torch_in_fp16(tmp_path):
    torch.manual_seed(0)
    net = F.Recogniser(F.CONDITIONING.net).eval()
    for m in net.modules():  # non-trivial BN statistics, folded into the convs by the export
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = F.export_recogniser(net, tmp_path / "rec.onnx")
    path32 = F.export_recogniser(net, tmp_path / "rec32.onnx", fp16=False)
    assert os.path.getsize(path) < 4e6 and os.path.getsize(path) < 0.55 * os.path.getsize(path32)
    types = {i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    rec = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(rec, ArcFaceONNX) and rec.input_mean == 127.5
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    got = rec.get_feat([np.ascontiguousarray(c[:, :, ::-1]) for c in crops])  # BGR in, as FaceAnalyzer passes
    with torch.no_grad():
        ref = net.embed((torch.from_numpy(crops).permute(0, 3, 1, 2).float() - 127.5) / 127.5).numpy()
    assert got.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (got * ref).sum(1).min() > 0.999


def test_detector_export_decodes_like_torch(tmp_path):
    """insightface's SCRFD decoding of the exported file = anchor-point decoding of the torch outputs."""
    torch.manual_seed(0)
    net = F.Detector(F.TINY_DETECTOR.net).eval()
    for head in net.heads:
        torch.nn.init.normal_(head[-1].weight, std=0.3)
        torch.nn.init.normal_(head[-1].bias, std=1.0)
    det = model_zoo.get_model(str(F.export_detector(net, tmp_path / "det.onnx")), providers=["CPUExecutionProvider"])
    assert isinstance(det, SCRFD) and det.use_kps and det.fmc == 3
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # BGR
    dets, kpss = det.detect(img, input_size=(64, 64), det_thresh=0.0)
    x = (torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() - 127.5) / 128.0
    with torch.no_grad():
        outs = net(x)
    best = None
    for s, out in zip(F.STRIDES, outs, strict=True):
        o = out[0].numpy()
        score = 1 / (1 + np.exp(-o[0]))
        i, j = np.unravel_index(score.argmax(), score.shape)
        if best is None or score[i, j] > best[0]:
            ax, ay, d = j * s, i * s, o[1:5, i, j] * s
            points = o[5:15, i, j].reshape(5, 2) * s + [ax, ay]
            best = (score[i, j], [ax - d[0], ay - d[1], ax + d[2], ay + d[3]], points)
    np.testing.assert_allclose(dets[0, 4], best[0], atol=2e-3)
    np.testing.assert_allclose(dets[0, :4], best[1], atol=0.05)
    np.testing.assert_allclose(kpss[0], best[2], atol=0.05)


# -------------------------------------------------------------------------------------- geometry
def test_alignment_matches_encoder_align(photos):
    images, _, kps = photos
    m = F.similarity_to_template(torch.from_numpy(kps)).numpy()
    np.testing.assert_allclose(m, np.stack([alignment_matrix(k) for k in kps]), atol=1e-3)
    crops = F.aligned_crops(torch.from_numpy(images).permute(0, 3, 1, 2).float(), torch.from_numpy(kps))
    ref = np.stack([align_face(i, k) for i, k in zip(images, kps, strict=True)]).astype(np.float32)
    assert np.abs(crops.permute(0, 2, 3, 1).numpy() - ref).max() <= 1.0


def test_warp_affine_is_cv2s():
    img = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    m = np.array([[1.3, -0.4, 5.2], [0.5, 1.1, -3.7]])
    got = F.warp_affine(torch.from_numpy(img).permute(2, 0, 1)[None].float(), torch.from_numpy(m)[None], 24)
    ref = cv2.warpAffine(img, m, (24, 24), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(got[0].permute(1, 2, 0).numpy() - ref).max() <= 1.0


def test_flip_faces_keeps_landmark_order(photos):
    images, _, kps = photos
    imgs = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    boxes = torch.from_numpy(np.concatenate([kps.min(1) - 5, kps.max(1) + 5], 1))
    fi, fk, fb = F.flip_faces(imgs, torch.from_numpy(kps), boxes, torch.ones(len(images), dtype=torch.bool))
    assert torch.equal(fi, imgs.flip(-1))
    assert (fk[:, 0, 0] < fk[:, 1, 0]).all() and (fk[:, 3, 0] < fk[:, 4, 0]).all()  # image-left first
    assert (fb[:, 0] < fb[:, 2]).all()
    # the flipped crop is the mirrored crop (the template is symmetric up to a fraction of a pixel)
    a = F.aligned_crops(fi, fk)
    b = F.aligned_crops(imgs, torch.from_numpy(kps)).flip(-1)
    assert (a - b).abs().mean() < 12.0


# ---------------------------------------------------------------------------------------- losses
def test_arcface_head():
    head = F.ArcFaceHead(5, 8, scale=32.0)
    feats = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    plain, _ = head(feats, labels, 0.0)
    cos = TF.normalize(feats) @ TF.normalize(head.weight).T
    torch.testing.assert_close(plain, TF.cross_entropy(32.0 * cos, labels))
    with_margin, _ = head(feats, labels, 0.5)
    assert with_margin > plain
    _, acc = head(head.weight.detach()[labels] * 3.0, labels, 0.5)
    assert acc == 1.0


def test_detector_targets_decode_to_the_truth():
    boxes = torch.tensor([[10.0, 14.0, 36.0, 44.0], [0.0, 0.0, 0.0, 0.0]])
    kps = torch.tensor([[[18.0, 24.0], [28.0, 24.5], [23.0, 31.0], [19.0, 37.0], [27.0, 37.0]]]).repeat(2, 1, 1)
    targets = F.detector_targets(boxes, kps, torch.tensor([True, False]), radius=1.0)
    (pos8, box8, kps8), (pos16, _, _), (pos32, _, _) = targets
    assert pos8[1].sum() == 0 and pos16.sum() == 0 and pos32.sum() == 0  # no face; a 28 px face is stride 8's
    ys, xs = torch.nonzero(pos8[0], as_tuple=True)
    # centre (23, 29): anchor points (x 8, y 8) within 8 px are x 16, 24 and y 24, 32; (24, 32) is the nearest
    assert set(zip(ys.tolist(), xs.tolist())) == {(3, 2), (3, 3), (4, 2), (4, 3)}
    for y, x in zip(ys.tolist(), xs.tolist()):
        ax, ay = 8.0 * x, 8.0 * y
        d = box8[0, :, y, x] * 8
        torch.testing.assert_close(torch.stack([ax - d[0], ay - d[1], ax + d[2], ay + d[3]]), boxes[0])
        torch.testing.assert_close(kps8[0, :, y, x].view(5, 2) * 8 + torch.tensor([ax, ay]), kps[0])


def test_render_scenes_are_images():
    scenes = F.render_scenes(6, torch.Generator().manual_seed(0))
    assert scenes.shape == (6, 3, 64, 64) and scenes.min() >= 0 and scenes.max() <= 255
    assert torch.equal(scenes, scenes.round()) and scenes.std() > 5
    assert torch.equal(scenes, F.render_scenes(6, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------------------------- pack policy
def _write_pack_json(pack: Path, data: dict) -> None:
    (pack / PACK_JSON).write_text(json.dumps(data))


def test_pack_json_sets_the_policy(tmp_path):
    pack = make_pack(tmp_path / "pack", genderage=None)
    assert FaceAnalyzer.from_pack(pack).policy == FacePolicy()  # no pack.json: the real-photo defaults
    _write_pack_json(pack, {"min_face_size": 12, "det_size": 64, "min_det_score": 0.4})
    fa = FaceAnalyzer.from_pack(pack)
    assert (fa.policy.min_face_size, fa.policy.det_size, fa.policy.min_det_score) == (12, 64, 0.4)
    assert fa.face_model is None
    mine = FaceAnalyzer.from_pack(pack, policy=FacePolicy(min_face_size=40)).policy  # set by the caller: kept
    assert (mine.min_face_size, mine.det_size) == (40, 64)
    assert pack_policy(tmp_path, FacePolicy(det_size=320)) == FacePolicy(det_size=320)  # no pack.json there


@pytest.mark.parametrize("data", [{"det_size": "64"}, {"min_face_size": 1.5}, {"min_det_score": -1},
                                  {"det_sise": 64}, {"face_model": []}, {"det_size": 0}])
def test_bad_pack_json_is_refused(tmp_path, data):
    pack = make_pack(tmp_path / "pack", genderage=None)
    _write_pack_json(pack, data)
    with pytest.raises(WeightsError, match="pack.json"):
        FaceAnalyzer.from_pack(pack)


def test_pack_json_face_model_checks_the_recogniser(tmp_path):
    pack = make_pack(tmp_path / "pack", genderage=None)
    block = F.face_model_block(pack, "standin", recogniser_file="w600k_r50.onnx")
    _write_pack_json(pack, {"face_model": block})
    assert FaceAnalyzer.from_pack(pack).face_model == block
    _write_pack_json(pack, {"face_model": {**block, "recognition_sha256": "0" * 64}})
    with pytest.raises(WeightsError, match="SHA-256"):
        FaceAnalyzer.from_pack(pack)


# --------------------------------------------------------------------------------- verification
def test_tar_at_far_counts_exactly():
    genuine = np.array([0.9] * 90 + [0.1] * 10)
    impostor = np.linspace(-1.0, 0.5, 10_000)
    tar, threshold = F.tar_at_far(genuine, impostor, 1e-3)
    assert threshold == pytest.approx(np.sort(impostor)[::-1][10])
    assert np.sum(impostor > threshold) <= 10 and tar == pytest.approx(0.9)
    assert F.tar_at_far(genuine, impostor, 0.0)[1] == pytest.approx(0.5)


def test_verification_report_on_constructed_embeddings():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((64, 20)))[0].T  # 20 orthonormal identities in 64-d
    labels = np.repeat(np.arange(20), 5)
    feats = centres[labels] + 0.02 * rng.standard_normal((100, 64))
    report = F.verification_report(feats, labels)
    assert report["tar"] == 1.0 and report["same"]["pairs"] == 200 and report["different"]["pairs"] == 4750
    assert report["same"]["mean"] > 0.9 and abs(report["different"]["mean"]) < 0.1
    assert sum(report["same"]["histogram"]["counts"]) == 200
    valid = np.ones(100, bool)
    valid[0] = False  # no face in one photo: its 4 genuine pairs are rejected
    assert F.verification_report(feats, labels, valid)["tar"] == pytest.approx(196 / 200)
    noise = rng.standard_normal((100, 64))  # no identity at all: near chance
    assert F.verification_report(noise, labels)["tar"] < 0.05


def test_colour_histograms_ignore_layout():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    b = rng.permutation(a.reshape(-1, 3)).reshape(a.shape)  # same colours, other places
    c = np.full_like(a, 200)
    h = F.colour_histograms(np.stack([a, b, c]))
    assert h.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0)
    assert h[0] @ h[1] == pytest.approx(1.0) and h[0] @ h[2] < 0.2
