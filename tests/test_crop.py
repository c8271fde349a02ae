"""One face-crop rule (encoder.crop): data_prep's shards and refinement crop a photo the same way."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data_prep.process import PrepConfig, SampleProcessor
from data_prep.sources import RawSample
from encoder.crop import face_crop, square_crop
from encoder.face_analysis import LocatedFace
from personalize.record import PhotoInfo
from personalize.refine import photo_crops

DOWNSAMPLE = 8  # the VAE's factor: shard boxes are in latent pixels


def _photo(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs * 255 // w, ys * 255 // h, (xs + ys) % 256], axis=-1)
    return (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


class _OneFace:
    """Stands in for the face analyzer: the photo holds one face at `box`."""

    def __init__(self, box):
        self.box = np.asarray(box, dtype=np.float32)

    def locate(self, rgb, max_other_face=None):
        return LocatedFace(box=self.box, kps=np.zeros((5, 2), np.float32), det_score=0.9,
                           aligned=np.zeros((112, 112, 3), np.uint8), n_faces=1)

    def embed_aligned(self, crops):  # the face, its mirror and the augmented view (data_prep.augment)
        return np.ones((len(crops), 512), np.float32) / np.sqrt(512)


def _prepared(rgb: np.ndarray, box, resolution: int):
    models = SimpleNamespace(downsample=DOWNSAMPLE, faces=SimpleNamespace(detector=None, recogniser=None))
    processor = SampleProcessor(models, PrepConfig(resolution=resolution, min_image_side=64, min_face_size=16))
    processor.faces = _OneFace(box)
    return processor.prepare(RawSample(key="p", image=_png(rgb), caption="a photo"))


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("shape, box", [((320, 480), (300.3, 40.7, 410.2, 190.9)),  # wide, clamped right
                                         ((500, 300), (60.5, 20.25, 170.75, 150.5)),  # tall, clamped top
                                         ((256, 256), (90.0, 80.0, 150.0, 170.0))])  # square: the whole photo
def test_data_prep_and_refinement_crop_alike(tmp_path, shape, box):
    rgb = _photo(*shape)
    (tmp_path / "p.png").write_bytes(_png(rgb))
    prepared = _prepared(rgb, box, resolution=64)
    assert not isinstance(prepared, str), prepared
    # refinement reads the photo from disk and the box from the identity record (Python floats)
    stored_box = [float(v) for v in np.float32(box)]
    record = SimpleNamespace(photos=[PhotoInfo(file=str(tmp_path / "p.png"), box=stored_box, det_score=0.9,
                                               n_faces=1)])
    crops, boxes = photo_crops(record, 64, DOWNSAMPLE)
    np.testing.assert_array_equal(crops[0], prepared.crop)
    np.testing.assert_array_equal(boxes[0].numpy(), prepared.box / DOWNSAMPLE)  # the shard's latent box
    x0, y0, side = prepared.meta["crop"]
    assert side == min(shape) and (x0, y0, side) == square_crop(shape[1], shape[0], np.float32(box))


def test_face_crop_window_and_box():
    rgb = _photo(100, 160)
    crop, box = face_crop(rgb, (120.0, 10.0, 150.0, 50.0), 100)  # side 100 = size: no resize
    assert square_crop(160, 100, (120.0, 10.0, 150.0, 50.0)) == (60, 0, 100)  # centre 135 -> clamped to 60
    np.testing.assert_array_equal(crop, rgb[:, 60:160])
    np.testing.assert_array_equal(box, np.float32([60, 10, 90, 50]))
    small, small_box = face_crop(rgb, (120.0, 10.0, 150.0, 50.0), 50)
    assert small.shape == (50, 50, 3) and small.dtype == np.uint8
    np.testing.assert_allclose(small_box, [30, 5, 45, 25])
