"""Face detection, alignment and ArcFace embedding of a person's photos (insightface packs).

The product loads an insightface model pack (antelopev2 or buffalo_l: a SCRFD detector, an ArcFace
recogniser and optionally the genderage model) with insightface's own loading code, then applies a
policy: minimum face size and detection score, which face to keep when a photo holds several.
Public images are RGB; insightface's models take BGR, the conversion happens here.

The face model. Embeddings of different recognisers (antelopev2's glintr100, buffalo_l's w600k_r50)
live in unrelated spaces, so every embedding store carries a `face_model` block (`face_model_block`):

    {"pack": "antelopev2", "recognition_file": "glintr100.onnx", "recognition_sha256": "...",
     "embedding_size": 512, "alignment": {"template": [[x, y] x 5], "size": 112}, "crop": CROP_RULE}

data_prep writes it into the shard manifest, pretraining into the exported identity module, train.py
into the identity record; `face_model_mismatch` compares two of them (the recogniser's bytes, the
embedding size, the alignment and the crop rule: a renamed pack folder is no mismatch). A pack
folder may hold a `pack.json` ({"name": ..., anything else}): its name replaces the folder's, the
rest is kept under "pack_json"; nothing requires it.

A pack may carry its own policy in `pack.json` (packs for other kinds of photos, e.g. the face
world's 64 x 64 renders): {"min_face_size": ..., "det_size": ..., "min_det_score": ..., "face_model":
{...}}, every key optional. Its values replace the FacePolicy defaults (which suit real photos) in
`from_pack`; a field the caller set to something else than its default wins. The `face_model` block
(pack name, recognition file and SHA-256, embedding size, alignment template, crop rule) is kept as
`FaceAnalyzer.face_model`, and the recogniser file is checked against its SHA-256.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from encoder.align import align_face, arcface_template
from encoder.photos import PhotoError, load_rgb, scan_folder
from models.errors import UserError
from models.paths import WeightsError, file_sha256

logger = logging.getLogger(__name__)

# Candidates scoring at least this much (but below the policy's minimum) are reported as
# "detection score 0.31 < 0.5" instead of "no face detected".
CANDIDATE_FLOOR = 0.2
# Pack members that are 2D/3D landmark regressors: never needed here, so never loaded.
LANDMARK_FILES = frozenset({"1k3d68.onnx", "2d106det.onnx"})
PACK_JSON = "pack.json"  # optional policy file of a pack folder
# How the recogniser's input is cut from a photo (encoder.align.align_face); a new rule gets a new name.
CROP_RULE = "5-point similarity (Umeyama) onto the template, bilinear, black border; mirrored crop too"
PACK_HINT = ("Get insightface's antelopev2 or buffalo_l model pack (antelopev2.zip / buffalo_l.zip), "
             "unzip it and put the folder under checkpoints/ (e.g. checkpoints/antelopev2/*.onnx), "
             "or pass the folder's path.")


@dataclass(frozen=True)
class FacePolicy:
    """Which detections count as a usable face."""

    min_face_size: int = 32  # shorter side of the box, in pixels of the original photo
    min_det_score: float = 0.5
    det_size: int = 640  # detector input (square)
    max_side: int = 1600  # larger photos are downscaled for detection only
    select: Literal["largest", "first"] = "largest"  # first = highest detection score

    def __post_init__(self):
        if self.select not in ("largest", "first"):
            raise ValueError(f"select must be 'largest' or 'first', got {self.select!r}")
        if self.det_size <= 0 or self.max_side <= 0:
            raise ValueError("det_size and max_side must be positive")


PACK_POLICY_FIELDS = {"min_face_size": int, "det_size": int, "min_det_score": float}


def read_pack_json(pack_dir: str | os.PathLike | None) -> dict | None:
    """The pack's pack.json (validated), or None when it has none."""
    path = None if pack_dir is None else Path(pack_dir) / PACK_JSON
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object")
    unknown = sorted(set(data) - set(PACK_POLICY_FIELDS) - {"face_model", "name"})
    if unknown:
        raise WeightsError(f"{path}: unknown keys {unknown}; known: {sorted(PACK_POLICY_FIELDS)}, face_model and name")
    for name, kind in PACK_POLICY_FIELDS.items():
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (kind is int and value != int(value)) or value < 0):
            raise WeightsError(f"{path}: {name} must be a non-negative {kind.__name__}, got {value!r}")
    if not isinstance(data.get("face_model", {}), dict):
        raise WeightsError(f"{path}: face_model must be a JSON object")
    return data


def pack_policy(pack_dir: str | os.PathLike, policy: FacePolicy = FacePolicy()) -> FacePolicy:
    """`policy` with the pack's pack.json values in the fields `policy` leaves at the FacePolicy defaults."""
    data = read_pack_json(pack_dir)
    if not data:
        return policy
    defaults = FacePolicy()
    changes = {name: kind(data[name]) for name, kind in PACK_POLICY_FIELDS.items()
               if data.get(name) is not None and getattr(policy, name) == getattr(defaults, name)}
    try:
        return dataclasses.replace(policy, **changes)
    except ValueError as e:
        raise WeightsError(f"{Path(pack_dir) / PACK_JSON}: {e}") from e


def _check_face_model(pack_dir: Path, face_model: dict, recogniser: Any) -> None:
    """The recogniser file must be the one pack.json's face_model block names, with its SHA-256."""
    name, digest = face_model.get("recognition_file"), face_model.get("recognition_sha256")
    path = Path(getattr(recogniser, "model_file", "") or "")
    if not name or not digest or path.name != name or not path.is_file():
        return
    if file_sha256(path) != digest:
        raise WeightsError(f"{path} does not match the SHA-256 in {pack_dir / PACK_JSON} ({digest[:12]}...); "
                           f"the recogniser was replaced without updating pack.json")


@dataclass(eq=False)
class Face:
    box: np.ndarray  # float32 [4] x1, y1, x2, y2 in the original photo
    kps: np.ndarray  # float32 [5, 2] eyes, nose, mouth corners in the original photo
    det_score: float
    embedding: np.ndarray  # float32 [512], L2-normalised, of the aligned crop
    embedding_flip: np.ndarray  # float32 [512], L2-normalised, of the mirrored aligned crop
    aligned: np.ndarray  # uint8 [112, 112, 3] RGB
    n_faces: int  # detections in the photo passing the score threshold
    gender: str | None = None  # "male" / "female" from the pack's genderage model
    age: float | None = None

    @property
    def size(self) -> float:
        """Shorter side of the box in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def mirrored(aligned: np.ndarray) -> np.ndarray:
    """An aligned crop [S, S, 3] mirrored left-right: the input of a face's flip embedding."""
    return np.ascontiguousarray(aligned[:, ::-1])


@dataclass(eq=False)
class LocatedFace:
    """A face found and aligned but not embedded yet: `FaceAnalyzer.locate`'s result, so that a caller with
    many photos (data_prep) can embed all their faces in one recogniser batch and skip the photos its own
    filters reject. `with_embeddings` completes it into a Face."""

    box: np.ndarray  # float32 [4] x1, y1, x2, y2 in the original photo
    kps: np.ndarray  # float32 [5, 2]
    det_score: float
    aligned: np.ndarray  # uint8 [S, S, 3] RGB, S = the recogniser's input side
    n_faces: int

    def with_embeddings(self, embedding: np.ndarray, embedding_flip: np.ndarray) -> Face:
        return Face(box=self.box.copy(), kps=self.kps.copy(), det_score=self.det_score, embedding=embedding,
                    embedding_flip=embedding_flip, aligned=self.aligned, n_faces=self.n_faces)


class FaceRejected(UserError):
    """The photo has no face usable under the policy; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class FolderResult:
    faces: list[tuple[Path, Face]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)  # used, with a remark (several faces)


@dataclass(eq=False)
class _Detection:
    box: np.ndarray
    kps: np.ndarray
    score: float

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


class _AttributeTarget(dict):
    """The face object insightface's Attribute.get expects: `.bbox` read, items written."""

    def __init__(self, bbox: np.ndarray):
        super().__init__(bbox=bbox)
        self.bbox = bbox


def _session_options():
    """ONNX Runtime options shared by the pack's sessions: worker threads sleep between runs instead
    of spinning, so the detector's and recogniser's thread pools, which run one after the other,
    do not compete for the cores (docs/performance.md, "Face analysis threads")."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def default_providers() -> list[str]:
    """CUDA when this onnxruntime offers it (onnxruntime-gpu), else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norm <= 0):
        raise FaceRejected("recogniser returned an invalid embedding")
    return (x / norm).astype(np.float32)


def _pack_onnx_files(pack_dir: Path) -> list[Path]:
    files = sorted(p for p in pack_dir.glob("*.onnx") if p.is_file())
    if not files:
        # antelopev2.zip unpacks to antelopev2/antelopev2/*.onnx: accept one nested folder.
        subdirs = [d for d in sorted(pack_dir.iterdir()) if d.is_dir() and any(d.glob("*.onnx"))]
        if len(subdirs) == 1:
            files = sorted(p for p in subdirs[0].glob("*.onnx") if p.is_file())
    return files


class FaceAnalyzer:
    """Detector + recogniser (+ optional genderage model) under a FacePolicy.

    detector: ``detect(img_bgr, input_size=(w, h)) -> (dets [N, 5] x1 y1 x2 y2 score, kps [N, 5, 2])``
    (an insightface SCRFD/RetinaFace, or any object with that method); recogniser:
    ``get_feat(list of 112x112 BGR crops) -> [N, D]`` (insightface ArcFaceONNX); attribute:
    insightface's genderage Attribute (``get(img_bgr, face_with_bbox) -> (gender, age)``) or None.
    """

    def __init__(self, detector: Any, recogniser: Any, attribute: Any = None, *,
                 policy: FacePolicy = FacePolicy(), pack_dir: str | os.PathLike | None = None):
        self.pack_dir = None if pack_dir is None else Path(pack_dir)  # the pack folder it was loaded from
        self.detector = detector
        self.recogniser = recogniser
        self.attribute = attribute
        self.policy = policy
        self.face_model: dict | None = None  # pack.json's face_model block (from_pack)
        if hasattr(detector, "det_thresh"):
            # Let weaker candidates through so a rejection can name their score; the policy filters.
            detector.det_thresh = min(float(policy.min_det_score), CANDIDATE_FLOOR)
        size = getattr(recogniser, "input_size", None)
        self.crop_size = int(size[0]) if size and isinstance(size[0], (int, np.integer)) else 112
        shape = getattr(recogniser, "input_shape", None)
        self._batch_one = bool(shape) and isinstance(shape[0], (int, np.integer)) and int(shape[0]) == 1

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pack(cls, pack_dir: str | os.PathLike, *, providers: Sequence[Any] | None = None,
                  policy: FacePolicy = FacePolicy()) -> FaceAnalyzer:
        """Load an insightface pack folder's detector, recogniser and genderage model.

        Each .onnx file goes through ``insightface.model_zoo.get_model`` (local path only, never a
        download) and is identified by the model object insightface returns for it. The pack's
        pack.json, if any, sets the policy fields `policy` leaves at their defaults (pack_policy).
        """
        pack_dir = Path(pack_dir).expanduser()
        if not pack_dir.is_dir():
            what = "is not a folder" if pack_dir.exists() else "does not exist"
            raise WeightsError(f"insightface face pack folder {pack_dir} {what}. {PACK_HINT}")
        pack_json = read_pack_json(pack_dir)
        policy = pack_policy(pack_dir, policy)
        files = _pack_onnx_files(pack_dir)
        if providers is None:
            providers = default_providers()
        from insightface.model_zoo import model_zoo

        options = _session_options()
        detector = recogniser = attribute = None
        found: list[str] = []
        for path in files:
            if path.name in LANDMARK_FILES:
                found.append(f"{path.name} (landmarks, not used)")
                continue
            try:
                model = model_zoo.get_model(str(path), providers=list(providers), sess_options=options)
            except Exception as e:  # a corrupt or foreign .onnx: note it, keep looking
                logger.warning("face pack: could not load %s: %s", path, e)
                found.append(f"{path.name} (failed to load: {type(e).__name__})")
                continue
            task = getattr(model, "taskname", None)
            role = None
            if task == "detection" and detector is None:
                detector, role = model, "detector"
            elif task == "recognition" and recogniser is None:
                recogniser, role = model, "recogniser"
            elif task == "genderage" and attribute is None:
                attribute, role = model, "genderage"
            found.append(f"{path.name} ({role or task or 'not recognised'})")
        missing = [name for name, m in (("a face detector (SCRFD/RetinaFace, e.g. det_10g.onnx or "
                                          "scrfd_10g_bnkps.onnx)", detector),
                                         ("an ArcFace recogniser (e.g. w600k_r50.onnx or glintr100.onnx)",
                                          recogniser)) if m is None]
        if missing:
            listing = ", ".join(found) if found else "no .onnx files"
            raise WeightsError(f"insightface face pack {pack_dir} lacks {' and '.join(missing)}; "
                               f"found: {listing}. {PACK_HINT}")
        if getattr(detector, "use_kps", True) is False:
            raise WeightsError(f"the face detector in {pack_dir} does not predict the 5 landmarks needed "
                               f"for alignment. {PACK_HINT}")
        face_model = (pack_json or {}).get("face_model")
        if face_model:
            _check_face_model(pack_dir, face_model, recogniser)
        logger.info("face pack %s: %s", pack_dir, ", ".join(found))
        analyzer = cls(detector, recogniser, attribute, policy=policy, pack_dir=pack_dir)
        analyzer.face_model = face_model
        return analyzer

    # ---------------------------------------------------------------------------------- analysis
    def detect(self, img_rgb: np.ndarray) -> list[_Detection]:
        """Every candidate the detector returns, in original coordinates, best score first."""
        img_rgb = _as_rgb(img_rgb)
        h, w = img_rgb.shape[:2]
        if min(h, w) * self.policy.det_size < 2 * max(h, w):  # under 2 px across at detector size
            raise FaceRejected(f"image aspect ratio too extreme ({w}x{h})")
        scale = min(1.0, self.policy.max_side / float(max(h, w)))
        det_img = img_rgb
        if scale < 1.0:
            new_size = (max(1, round(w * scale)), max(1, round(h * scale)))
            det_img = cv2.resize(img_rgb, new_size, interpolation=cv2.INTER_AREA)
            # the exact factors per axis after rounding
            sx, sy = new_size[0] / float(w), new_size[1] / float(h)
        else:
            sx = sy = 1.0
        bgr = np.ascontiguousarray(det_img[:, :, ::-1])
        size = int(self.policy.det_size)
        dets, kpss = self.detector.detect(bgr, input_size=(size, size))
        dets = np.zeros((0, 5), np.float32) if dets is None else np.asarray(dets, dtype=np.float32)
        if dets.shape[0] == 0:
            return []
        if kpss is None:
            raise RuntimeError("the face detector returned no landmarks; alignment needs 5 points")
        kpss = np.asarray(kpss, dtype=np.float32).reshape(dets.shape[0], 5, 2)
        inv = np.array([1.0 / sx, 1.0 / sy], dtype=np.float32)
        out = []
        for det, kps in zip(dets, kpss, strict=True):
            box = (det[:4].reshape(2, 2) * inv).reshape(4).astype(np.float32)
            out.append(_Detection(box=box, kps=(kps * inv).astype(np.float32), score=float(det[4])))
        out.sort(key=lambda d: -d.score)
        return out

    def _accepted(self, img_rgb: np.ndarray) -> tuple[list[_Detection], list[_Detection]]:
        """(detections passing the policy, detections passing the score threshold), best score first."""
        pol = self.policy
        cands = self.detect(img_rgb)
        scored = [d for d in cands if d.score >= pol.min_det_score]
        if not scored:
            if cands:
                raise FaceRejected(f"detection score {cands[0].score:.2f} < {pol.min_det_score:g}")
            raise FaceRejected("no face detected")
        sized = [d for d in scored if d.size >= pol.min_face_size]
        if not sized:
            biggest = max(scored, key=lambda d: d.size)
            raise FaceRejected(f"face too small ({biggest.size:.0f} px < {pol.min_face_size})")
        return sized, scored

    def embed_aligned(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        """Aligned crops [S, S, 3] uint8 RGB (S = the recogniser's input side) -> [N, D] L2-normalised
        embeddings. Raises FaceRejected when the recogniser returns an invalid embedding."""
        return self._embed(crops_rgb)

    def _embed(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        crops_bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops_rgb]
        if self._batch_one:
            feats = np.concatenate([np.asarray(self.recogniser.get_feat([c])).reshape(1, -1)
                                    for c in crops_bgr])
        else:
            feats = np.asarray(self.recogniser.get_feat(crops_bgr))
        return _l2_normalise(feats.reshape(len(crops_bgr), -1))

    def _attributes(self, img_bgr: np.ndarray, box: np.ndarray) -> tuple[str | None, float | None]:
        target = _AttributeTarget(np.asarray(box, dtype=np.float32))
        result = self.attribute.get(img_bgr, target)
        if getattr(self.attribute, "taskname", "genderage") != "genderage" or result is None:
            return None, None
        gender, age = result
        return ("male" if int(gender) == 1 else "female"), float(age)

    def _align(self, img_rgb: np.ndarray, dets: list[_Detection]) -> list[np.ndarray]:
        try:
            return [align_face(img_rgb, d.kps, self.crop_size) for d in dets]
        except ValueError as e:  # degenerate or non-finite landmarks: this photo only
            raise FaceRejected(f"landmarks unusable for alignment ({e})") from e

    def _faces(self, img_rgb: np.ndarray, dets: list[_Detection], n_faces: int) -> list[Face]:
        aligned = self._align(img_rgb, dets)
        flipped = [mirrored(a) for a in aligned]
        emb = self._embed(aligned + flipped)
        n = len(dets)
        img_bgr = None if self.attribute is None else np.ascontiguousarray(img_rgb[:, :, ::-1])
        faces = []
        for i, d in enumerate(dets):
            gender, age = (None, None) if img_bgr is None else self._attributes(img_bgr, d.box)
            faces.append(Face(box=d.box.copy(), kps=d.kps.copy(), det_score=d.score, embedding=emb[i],
                              embedding_flip=emb[n + i], aligned=aligned[i], n_faces=n_faces,
                              gender=gender, age=age))
        return faces

    def analyze(self, img_rgb: np.ndarray, max_other_face: float | None = None) -> Face:
        """The face the policy picks (largest, or highest score). Raises FaceRejected.

        max_other_face: reject the photo when another detection passing the score threshold has
        more than this fraction of the picked face's area (corpora want one dominant face); checked
        before anything is embedded.
        """
        img_rgb = _as_rgb(img_rgb)
        pick, n_faces = self._pick(img_rgb, max_other_face)
        return self._faces(img_rgb, [pick], n_faces)[0]

    def locate(self, img_rgb: np.ndarray, max_other_face: float | None = None) -> LocatedFace:
        """analyze's face, found and aligned but not embedded (no recogniser call): embed many at once with
        embed_aligned([aligned..., mirrored...]) and complete each with LocatedFace.with_embeddings."""
        img_rgb = _as_rgb(img_rgb)
        pick, n_faces = self._pick(img_rgb, max_other_face)
        aligned = self._align(img_rgb, [pick])[0]
        return LocatedFace(box=pick.box.copy(), kps=pick.kps.copy(), det_score=pick.score, aligned=aligned,
                           n_faces=n_faces)

    def _pick(self, img_rgb: np.ndarray, max_other_face: float | None) -> tuple[_Detection, int]:
        """(the face the policy picks, detections passing the score threshold). Raises FaceRejected."""
        dets, scored = self._accepted(img_rgb)
        if self.policy.select == "largest":
            pick = max(dets, key=lambda d: d.area)  # max keeps the first (best score) on ties
        else:
            pick = dets[0]
        if max_other_face is not None:
            big = max((d.area for d in scored if d is not pick), default=0.0)
            if big > max_other_face * pick.area:
                raise FaceRejected(f"several faces: another is {big / pick.area:.0%} of the main face's area")
        return pick, len(scored)

    def analyze_all(self, img_rgb: np.ndarray) -> list[Face]:
        """Every face passing the policy, highest detection score first (for scorers)."""
        img_rgb = _as_rgb(img_rgb)
        try:
            dets, scored = self._accepted(img_rgb)
        except FaceRejected:
            return []
        return self._faces(img_rgb, dets, len(scored))

    def analyze_file(self, path: str | os.PathLike) -> Face:
        """load_rgb + analyze. Raises PhotoError or FaceRejected."""
        return self.analyze(load_rgb(path))

    def analyze_folder(self, folder: str | os.PathLike, progress: bool = False) -> FolderResult:
        """Every photo in `folder`: the usable faces, and every other entry of the folder (files that
        are not photos, photos without a usable face) with its reason."""
        photos, not_photos = scan_folder(folder)
        result = FolderResult()
        for path, reason in not_photos:
            logger.info("skipping %s: %s", path.name, reason)
            result.skipped.append((path, reason))
        iterator: Any = photos
        if progress:
            try:
                from tqdm import tqdm

                iterator = tqdm(photos, desc="faces", unit="photo")
            except ImportError:
                pass
        for path in iterator:
            try:
                face = self.analyze_file(path)
            except (PhotoError, FaceRejected) as e:
                logger.info("skipping %s: %s", path.name, e.reason)
                result.skipped.append((path, e.reason))
                continue
            result.faces.append((path, face))
            if face.n_faces > 1:
                which = "the largest" if self.policy.select == "largest" else "the highest-scoring"
                note = f"{face.n_faces} faces detected, {which} was used"
                logger.warning("%s: %s", path.name, note)
                result.notes.append((path, note))
        result.skipped.sort(key=lambda item: item[0].name)  # in the folder's order, whatever the reason
        return result


# ------------------------------------------------------------------------------------ face model
class FaceModelMismatch(UserError):
    """Embeddings of one face model meet a module or record of another (see the module docstring)."""


def face_model_fields(name: str | None, recognition_file: str | os.PathLike | None, embedding_size: int | None,
                      crop_size: int = 112) -> dict:
    """A `face_model` block (module docstring) for a recogniser file: the one schema, written by
    `face_model_block` for a loaded pack and by packs that declare theirs in pack.json."""
    path = None if recognition_file is None else Path(recognition_file)
    template = [[round(float(v), 4) for v in xy] for xy in arcface_template(crop_size)]
    return {"pack": name,
            "recognition_file": path.name if path is not None else None,
            "recognition_sha256": file_sha256(path) if path is not None and path.is_file() else None,
            "embedding_size": None if embedding_size is None else int(embedding_size),
            "alignment": {"template": template, "size": crop_size},
            "crop": CROP_RULE}


def face_model_block(analyzer: FaceAnalyzer) -> dict:
    """The `face_model` block of a loaded pack (module docstring): what its embeddings depend on."""
    rec = analyzer.recogniser
    model_file = getattr(rec, "model_file", None)
    has_file = bool(model_file) and Path(model_file).is_file()
    out_shape = getattr(rec, "output_shape", None)
    size = out_shape[-1] if out_shape and isinstance(out_shape[-1], (int, np.integer)) else None
    extra = dict(read_pack_json(analyzer.pack_dir) or {})
    declared = extra.pop("face_model", None) or {}
    name = (extra.pop("name", None) or declared.get("pack")
            or (analyzer.pack_dir.name if analyzer.pack_dir is not None else None))
    block = face_model_fields(name, model_file if has_file else None, size, analyzer.crop_size)
    if not has_file:
        block["recognition_file"] = f"{type(rec).__module__}.{type(rec).__name__}"
    if extra:
        block["pack_json"] = extra
    return block


# what makes embeddings comparable, and how a difference is named
MATCHED_KEYS = {"recognition_sha256": "another recognition model", "embedding_size": "another embedding size",
                "alignment": "another alignment template", "crop": "another crop rule"}


def face_model_mismatch(a: dict, b: dict) -> list[str]:
    """How two face_model blocks differ in what makes embeddings comparable ([] when they agree), e.g.
    ["another recognition model"]. A key missing (or null) in either block is not compared."""
    return [what for k, what in MATCHED_KEYS.items()
            if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]]


def describe_face_model(block: dict | None) -> str:
    """One line for messages: 'antelopev2 (glintr100.onnx, sha256 1a2b3c4d5e6f..., 512-d)'."""
    if not block:
        return "an unrecorded face model"
    sha = block.get("recognition_sha256")
    parts = [block.get("recognition_file"), f"sha256 {sha[:12]}..." if sha else None,
             f"{block['embedding_size']}-d" if block.get("embedding_size") else None]
    return f"{block.get('pack') or 'an unnamed pack'} ({', '.join(p for p in parts if p)})"


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """Validate an RGB image; grayscale is expanded, an alpha channel dropped."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {img.shape}")
    return np.ascontiguousarray(img)
