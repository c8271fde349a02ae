"""Test material for the eval scorer: a tiny CLIP built from a config, synthetic "people" whose faces
the marker detector of eval/bench/standin_faces.py finds, and independent reference computations.

A person is a smooth random texture; an image of the person pastes that texture around a marker
cell (which the marker detector reports as a face box with ArcFace landmarks), so the projection
recogniser gives similar embeddings for images of one person and unrelated ones for others. Every
pixel has red <= green outside the markers, so nothing else is detected.

The `direct_*` functions compute the competition's numbers the way its script did, with
insightface's own detector / recogniser calls (`detect(img, max_num=1)`, `get`) and open_clip's
model calls, independently of eval/competition_scorer.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from eval.bench.standin_faces import CELL, make_pack

CLIP_CFG = dict(embed_dim=32,
                vision_cfg=dict(layers=1, width=32, patch_size=8, image_size=32, head_width=16),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def tiny_open_clip(seed: int = 0):
    """(model, preprocess, tokenizer): an open_clip CLIP with random weights, OpenAI preprocessing."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**CLIP_CFG, quick_gelu=True).eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return model, preprocess, open_clip.get_tokenizer("ViT-B-32")


def tiny_image_clip(seed: int = 0):
    from models.image_clip import ImageCLIP

    model, preprocess, tokenizer = tiny_open_clip(seed)
    return ImageCLIP(model, preprocess, tokenizer)


def build_pack(folder: Path) -> Path:
    return make_pack(folder, genderage=None)


# ------------------------------------------------------------------------------------------ images
def _smooth(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """[h, w, 3] uint8 low-frequency texture with red <= green."""
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.uint8).copy()
    img[..., 0] = np.minimum(img[..., 0], img[..., 1])
    return img


def person_texture(person: int, size: int = 176) -> np.ndarray:
    return _smooth(np.random.default_rng(1000 + person), size, size)


def make_image(h: int, w: int, faces: list[tuple[int, int, int, float]], seed: int,
               noise: float = 12.0) -> np.ndarray:
    """An [h, w, 3] uint8 image. faces: (person, center_y, center_x, score), score in (0, 1] the
    detection score of the marker (a 640 x 640 image is not resized by the detector: its marker is
    one grid cell; other sizes get a larger marker that still covers a full cell after resizing)."""
    rng = np.random.default_rng(seed)
    img = _smooth(rng, h, w, cells=4)
    for person, cy, cx, score in faces:
        tex = person_texture(person).astype(np.float32)
        tex += rng.normal(0, noise, tex.shape)
        tex = np.clip(tex, 0, 255).astype(np.uint8)
        tex[..., 0] = np.minimum(tex[..., 0], tex[..., 1])
        s = tex.shape[0]
        y0, x0 = cy - s // 2, cx - s // 2
        ys, xs = slice(max(0, y0), min(h, y0 + s)), slice(max(0, x0), min(w, x0 + s))
        img[ys, xs] = tex[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        if (h, w) == (640, 640):  # not resized by the detector: one grid cell
            m, r0, c0 = CELL, cy - cy % CELL, cx - cx % CELL
        else:  # resized: a marker large enough to cover a full grid cell at any scale >= 0.5
            m = 3 * CELL
            r0, c0 = cy - m // 2, cx - m // 2
        green = int(round(255 * (1 - score)))
        img[r0:r0 + m, c0:c0 + m] = (255, green, 0)
    return img


def save(img: np.ndarray, path: Path, fmt: str = "PNG") -> Path:
    """Save under `path` whatever its suffix (PNG bytes keep pixels exact; the scorer decodes by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt, **({"quality": 98, "subsampling": 0} if fmt == "JPEG" else {}))
    return path


# ------------------------------------------------------------------------- independent references
class DirectModels:
    """The competition's per-image computations through insightface and open_clip directly."""

    def __init__(self, pack: Path, clip_seed: int = 0):
        from insightface.model_zoo import model_zoo

        self.det = model_zoo.get_model(str(pack / "det_10g.onnx"), providers=["CPUExecutionProvider"])
        self.det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
        self.rec = model_zoo.get_model(str(pack / "w600k_r50.onnx"), providers=["CPUExecutionProvider"])
        self.rec.prepare(-1)
        self.model, self.preprocess, self.tokenizer = tiny_open_clip(clip_seed)

    def face(self, path: Path) -> np.ndarray | None:
        """FaceAnalysis.get(img, max_num=1)[0].embedding, normalised (None: no face)."""
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(np.array(Image.open(path).convert("RGB"))[:, :, ::-1])
        bboxes, kpss = self.det.detect(bgr, max_num=1, metric="default")
        if bboxes.shape[0] == 0:
            return None
        face = Face(bbox=bboxes[0, :4], kps=kpss[0], det_score=bboxes[0, 4])
        emb = np.asarray(self.rec.get(bgr, face), dtype=np.float64)
        return emb / np.linalg.norm(emb)

    @torch.no_grad()
    def clip_image(self, path: Path) -> np.ndarray:
        x = self.preprocess(Image.open(path))[None]
        e = self.model.encode_image(x)[0].double().numpy()
        return e / np.linalg.norm(e)

    @torch.no_grad()
    def clip_text(self, text: str) -> np.ndarray:
        e = self.model.encode_text(self.tokenizer([text]))[0].double().numpy()
        return e / np.linalg.norm(e)
