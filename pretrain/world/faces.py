"""The face world's face models: two ArcFace recognisers and a SCRFD-signature detector, trained on renders.

Three frozen models, each trained from scratch on faces the renderer (data_prep.faceworld) draws on the
training device, training identities only, and exported to ONNX files that insightface's model_zoo
routes and runs exactly like a real pack's (see eval/bench/standin_faces.py for the signatures):

* the conditioning recogniser (`faces/recogniser.onnx`): a ResNet of insightface's IBasicBlocks on the
  aligned 112 x 112 crop, 512-d L2-normalised embedding, ArcFace loss over a table of training
  identities. What the identity module is conditioned on.
* the evaluation recogniser (`eval_faces/recogniser.onnx`): the same signature, another block type
  (inverted residuals with depthwise convolutions), other widths, another seed and other training
  identities; never used in training or conditioning, it scores identity.
* the detector (`faces/detector.onnx`): SCRFD's signature (input.1 [1, 3, ?, ?]; scores, box distances
  and 5-landmark distances for strides 8, 16, 32 with 2 anchors) trained on renders (face box and 5
  landmarks from the renderer) and face-free scenes, at detector input 64.

Training crops are aligned like the product aligns them: encoder/align.py's ArcFace template, a
least-squares similarity from the 5 landmarks (here batched in torch and jittered, since at inference
they come from the detector), warped with cv2.warpAffine's pixel convention. Exported weights are
stored as fp16 initializers, each cast to float32 where the graph reads it (ONNX Runtime folds the
casts when it loads the file), so the files are half the size and run in float32.

`pack.json` in the pack folder carries the face policy that suits 64 x 64 renders (min_face_size,
det_size, min_det_score), read by encoder/face_analysis.py, and the `face_model` block (pack name,
recogniser file and SHA-256, embedding size, alignment template, crop rule).

Verification (`verification_report`, `evaluate_recogniser`): TAR at a FAR over all same-identity and
different-identity pairs of N identities x K renders, the two similarity distributions, and the same
for a colour-histogram verifier on the same aligned crops (identity must not live in a few colours).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from encoder.align import arcface_template
from encoder.face_analysis import PACK_JSON, face_model_fields
from models.config_dict import config_from_dict
from models.weights import atomic_write
from pretrain.world.common import Stage, StageOptions, WorldData, as_json_config, param_groups

CROP = 112  # the recognisers' input side (insightface routes square inputs >= 112, multiples of 16)
EMBED_DIM = 512
IMAGE_SIZE = 64  # the renders' side
STRIDES = (8, 16, 32)  # SCRFD's feature strides
NUM_ANCHORS = 2  # SCRFD's anchors per position (both carry the same prediction here)
DET_MEAN, DET_STD = 127.5, 128.0  # SCRFD's input normalisation (insightface): (pixel - 127.5) / 128, RGB
REC_MEAN, REC_STD = 127.5, 127.5  # ArcFaceONNX's input normalisation: (pixel - 127.5) / 127.5, RGB
EXPORT_OPSET = 17
MAX_GRAD_NORM = 5.0  # gradient-norm clipping (AdamW barely feels it; it guards against spikes)
DETECTOR_FILE = "detector.onnx"
RECOGNISER_FILE = "recogniser.onnx"
PACK_DIR = "faces"  # conditioning pack (detector + conditioning recogniser + pack.json), in the world folder
EVAL_PACK_DIR = "eval_faces"  # evaluation recogniser (+ pack.json), in the world folder
# The face policy of a world pack: faces of 64 x 64 renders are some 20 to 30 px across and the
# detector was trained at input 64 (today's defaults, 32 px and 640, are for real photos).
WORLD_POLICY = {"min_face_size": 12, "det_size": IMAGE_SIZE, "min_det_score": 0.5}


# ============================================================================================ nets
@dataclass(frozen=True)
class RecogniserConfig:
    """A recogniser: stem (stride 2), stages (each starting with stride 2), GDC head, 512-d output.

    block: "ibasic" (insightface's IBasicBlock: BN, conv3x3, BN, PReLU, conv3x3, BN, + shortcut) or
    "inverted" (1x1 expand, PReLU, depthwise 3x3, PReLU, 1x1 project, + shortcut when shapes agree).
    The 112 crop magnifies the render's face about four times, so the stem halves it at once and the
    stages run at 28 (about the render's own resolution), 14 and 7 px.
    """

    block: str = "ibasic"
    stem: int = 24
    widths: tuple[int, ...] = (48, 96, 160)
    depths: tuple[int, ...] = (2, 3, 2)
    expansion: int = 3  # inverted blocks only
    head_width: int = 0  # 1x1 conv before the head (0: none)
    embed_dim: int = EMBED_DIM

    def __post_init__(self):
        if self.block not in ("ibasic", "inverted"):
            raise ValueError(f"block must be 'ibasic' or 'inverted', got {self.block!r}")
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths must be non-empty and of the same length")
        if CROP // 2 // 2 ** len(self.widths) < 1:
            raise ValueError(f"{len(self.widths)} stages downsample the {CROP} crop to nothing")

    @classmethod
    def from_dict(cls, d: dict) -> RecogniserConfig:
        d = dict(d)
        for k in ("widths", "depths"):
            if k in d:
                d[k] = tuple(d[k])
        return config_from_dict(cls, d, "recogniser")


def _conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class IBasicBlock(nn.Module):
    """[N, cin, H, W] -> [N, cout, H / stride, W / stride]: BN, conv, BN, PReLU, conv(stride), BN, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class InvertedBlock(nn.Module):
    """[N, cin, H, W] -> [N, cout, H / stride, W / stride]: expand 1x1, depthwise 3x3, project 1x1 (+ x)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(_conv_bn_act(cin, mid, 1), _conv_bn_act(mid, mid, 3, stride, groups=mid),
                                  _conv_bn_act(mid, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class Recogniser(nn.Module):
    """Aligned crops [N, 3, 112, 112] ((pixel - 127.5) / 127.5, RGB) -> features [N, embed_dim] (not normalised).

    `embed` L2-normalises; the exported ONNX graph outputs the normalised embedding.
    """

    def __init__(self, cfg: RecogniserConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = _conv_bn_act(3, cfg.stem, 3, 2)
        blocks: list[nn.Module] = []
        cin = cfg.stem
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            for j in range(depth):
                stride = 2 if j == 0 else 1
                blocks.append(IBasicBlock(cin, width, stride) if cfg.block == "ibasic"
                              else InvertedBlock(cin, width, stride, cfg.expansion))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.neck = _conv_bn_act(cin, cfg.head_width, 1) if cfg.head_width else nn.BatchNorm2d(cin)
        cin = cfg.head_width or cin
        side = CROP // 2 // 2 ** len(cfg.widths)
        # GDC (MobileFaceNet): a depthwise conv over the whole final map keeps where things are
        self.gdc = nn.Sequential(nn.Conv2d(cin, cin, side, groups=cin, bias=False), nn.BatchNorm2d(cin))
        self.fc = nn.Linear(cin, cfg.embed_dim, bias=False)
        self.features = nn.BatchNorm1d(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdc(self.neck(self.blocks(self.stem(x))))
        return self.features(self.fc(torch.flatten(x, 1)))  # [N, C, 1, 1] -> [N, C]; traced for ONNX

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 112, 112] -> [N, embed_dim], unit length."""
        return F.normalize(self.forward(x).float(), dim=1)


class _Normalised(nn.Module):
    """What the recogniser ONNX file computes: the L2-normalised embedding."""

    def __init__(self, net: Recogniser):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


@dataclass(frozen=True)
class DetectorConfig:
    """A small FPN detector: stem and stages down to strides 8, 16, 32, top-down neck, one head per stride."""

    stem: int = 16
    widths: tuple[int, int, int, int] = (24, 48, 64, 64)  # stride 4, 8, 16, 32
    depths: tuple[int, int, int, int] = (1, 2, 1, 1)
    neck: int = 48
    head: int = 64

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        d = dict(d)
        for k in ("widths", "depths"):
            if k in d:
                d[k] = tuple(d[k])
        return config_from_dict(cls, d, "detector")


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_act(c, c), _conv_bn_act(c, c, act=False))
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Detector(nn.Module):
    """Image [N, 3, H, W] ((pixel - 127.5) / 128, RGB; H, W multiples of 32) -> per stride 8, 16, 32 a map
    [N, 15, H / s, W / s]: score logit, 4 box distances (left, top, right, bottom) and 10 landmark offsets
    (x, y of 5 points), distances and offsets in units of the stride, from the anchor point (x s, y s)."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = _conv_bn_act(3, cfg.stem, 3, 2)  # stride 2
        stages, cin = [], cfg.stem
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            stages.append(nn.Sequential(_conv_bn_act(cin, width, 3, 2), *[_Res(width) for _ in range(depth)]))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList([_conv_bn_act(w, cfg.neck, 1) for w in cfg.widths[1:]])
        # stride-4 detail into the stride-8 level (eyes are a pixel or two across)
        self.fine = _conv_bn_act(cfg.widths[0], cfg.neck, 3, 2)
        self.smooth = nn.ModuleList([_conv_bn_act(cfg.neck, cfg.neck) for _ in STRIDES])
        self.heads = nn.ModuleList([nn.Sequential(_conv_bn_act(cfg.neck, cfg.head), _conv_bn_act(cfg.head, cfg.head),
                                                  nn.Conv2d(cfg.head, 15, 1)) for _ in STRIDES])
        for head in self.heads:
            nn.init.constant_(head[-1].bias[0], -4.0)  # start with few detections

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats[1:], strict=True)]
        lat[0] = lat[0] + self.fine(feats[0])
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        return [head(smooth(f)) for head, smooth, f in zip(self.heads, self.smooth, lat, strict=True)]


class _ScrfdSignature(nn.Module):
    """The detector as SCRFD's ONNX: input.1 [1, 3, H, W] -> scores [n_s, 1] x 3, boxes [n_s, 4] x 3,
    landmarks [n_s, 10] x 3 (n_s = H / s * W / s * 2, anchor fastest), in insightface's output order."""

    def __init__(self, net: Detector):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        scores, boxes, kpss = [], [], []
        for out in self.net(x):
            # plain permute / reshape: the traced graph must keep H and W symbolic
            flat = out.permute(0, 2, 3, 1).unsqueeze(3)  # [1, h, w, 1, 15]
            flat = torch.cat([flat] * NUM_ANCHORS, dim=3).reshape(-1, 15)  # both anchors predict the same
            scores.append(torch.sigmoid(flat[:, 0:1]))
            boxes.append(flat[:, 1:5])
            kpss.append(flat[:, 5:15])
        return tuple(scores + boxes + kpss)


# ========================================================================================= geometry
def similarity_to_template(kps: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """[B, 5, 2] landmarks (image pixels) -> [B, 2, 3] similarity taking them onto the ArcFace template.

    The least-squares similarity without reflection (encoder/align.py's Umeyama solution, which for
    faces never reflects), in closed form: with centred points as complex numbers s, d, the map is
    d = a s, a = sum(conj(s) d) / sum(|s|^2).
    """
    dst = torch.as_tensor(arcface_template(size), dtype=torch.float32, device=kps.device)
    src = kps.float()
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(0, keepdim=True)
    s, d = src - mu_s, (dst - mu_d).unsqueeze(0)
    den = s.square().sum((1, 2)).clamp_min(1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(1) / den
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / den
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], 1)  # [B, 2, 2]
    shift = mu_d.squeeze(0) - torch.einsum("bij,bj->bi", rot, mu_s.squeeze(1))
    return torch.cat([rot, shift.unsqueeze(-1)], dim=2)


def warp_affine(img: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.warpAffine(img, m, (size, size)) for a batch: [B, C, H, W], [B, 2, 3] -> [B, C, size, size].

    Bilinear, outside the image 0; pixel centres at integer coordinates (OpenCV's convention).
    """
    b, _, h, w = img.shape
    m = m.float()
    inv = torch.linalg.inv(m[:, :, :2])  # [B, 2, 2]
    ys, xs = torch.meshgrid(torch.arange(size, device=img.device, dtype=torch.float32),
                            torch.arange(size, device=img.device, dtype=torch.float32), indexing="ij")
    dst = torch.stack([xs, ys], -1).reshape(1, -1, 2) - m[:, None, :, 2]  # [B, P, 2]
    src = torch.einsum("bij,bpj->bpi", inv, dst)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=img.device)
    grid = rearrange((src + 0.5) * scale - 1.0, "b (y x) two -> b y x two", y=size)
    return F.grid_sample(img.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def aligned_crops(images: torch.Tensor, kps: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """Renders [B, 3, H, W] (0..255) and their landmarks [B, 5, 2] -> ArcFace crops [B, 3, size, size] (0..255)."""
    return warp_affine(images, similarity_to_template(kps, size), size)


# ========================================================================================== losses
class ArcFaceHead(nn.Module):
    """ArcFace (Deng et al., CVPR 2019): logits s cos(theta + m) for the true class, s cos(theta) otherwise.

    weight [classes, dim]; forward(features [B, dim], labels [B], margin) -> (loss, accuracy of the
    plain cosine argmax). Computed in float32.
    """

    def __init__(self, classes: int, dim: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale

    def forward(self, features: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        cos = F.normalize(features.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).T  # [B, C]
        target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        sin = torch.sqrt(1.0 - target.square())
        with_margin = target * math.cos(margin) - sin * math.sin(margin)
        # past theta = pi - m, cos(theta + m) stops decreasing: fall back to the linear penalty (insightface)
        with_margin = torch.where(target > math.cos(math.pi - margin), with_margin,
                                  target - math.sin(math.pi - margin) * margin)
        logits = cos.scatter(1, labels[:, None], with_margin) * self.scale
        accuracy = (cos.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels), accuracy


# ===================================================================================== ONNX export
def _fp16_initializers(model: Any, min_elements: int = 16) -> None:
    """Store every float32 initializer of `model` (onnx.ModelProto) with at least `min_elements` values as
    float16, read through a Cast to float32 placed at the start of the graph (in place)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        values = numpy_helper.to_array(init)
        if np.abs(values).max(initial=0.0) > 6e4:  # beyond float16's range: keep float32
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"Cast_fp16_{len(casts)}",
                                      to=TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)


def _export(module: nn.Module, dummy: torch.Tensor, path: str | os.PathLike, outputs: list[str],
            dynamic_axes: dict, fp16: bool) -> Path:
    """torch module -> ONNX file (TorchScript exporter, constant folding, BN folded into convs), written atomically."""
    import onnx

    module = module.float().cpu().eval()
    path = Path(path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), str(tmp), input_names=["input.1"], output_names=outputs,
                              dynamic_axes=dynamic_axes, opset_version=EXPORT_OPSET, do_constant_folding=True,
                              dynamo=False)
        model = onnx.load(str(tmp))
        if fp16:
            _fp16_initializers(model)
        onnx.save(model, str(tmp))

    return atomic_write(path, write)


def export_recogniser(net: Recogniser, path: str | os.PathLike, fp16: bool = True) -> Path:
    """insightface's recognition signature: input.1 [N, 3, 112, 112] -> embedding [N, 512], unit length."""
    import copy

    return _export(_Normalised(copy.deepcopy(net)), torch.zeros(1, 3, CROP, CROP), path, ["embedding"],
                   {"input.1": {0: "None"}, "embedding": {0: "None"}}, fp16)


def export_detector(net: Detector, path: str | os.PathLike, fp16: bool = True) -> Path:
    """SCRFD's signature with landmarks: input.1 [1, 3, ?, ?] -> 9 outputs (scores, boxes, landmarks x strides)."""
    import copy

    outputs = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    axes: dict[str, dict[int, str]] = {"input.1": {2: "?", 3: "?"}}
    axes.update({name: {0: f"n{name.split('_')[1]}"} for name in outputs})
    return _export(_ScrfdSignature(copy.deepcopy(net)), torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), path,
                   outputs, axes, fp16)


def face_model_block(pack_dir: str | os.PathLike, name: str, recogniser_file: str = RECOGNISER_FILE) -> dict:
    """The `face_model` block of pack.json (encoder.face_analysis's one schema): what the embeddings of
    this pack are and how crops are made."""
    return face_model_fields(name, Path(pack_dir) / recogniser_file, EMBED_DIM, CROP)


def write_pack_json(pack_dir: str | os.PathLike, name: str, policy: dict | None = None) -> Path:
    """pack.json: the face policy for this pack's photos (WORLD_POLICY by default) and its face_model block."""
    pack_dir = Path(pack_dir)
    data = {**(WORLD_POLICY if policy is None else policy), "face_model": face_model_block(pack_dir, name)}
    return atomic_write(pack_dir / PACK_JSON, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


# ====================================================================================== renders
def _world(seed: int, device: torch.device):
    from data_prep.faceworld.render import FaceWorld

    return FaceWorld(seed=seed, size=IMAGE_SIZE, device=device, chunk=1024 if device.type == "cuda" else 64)


def render_faces(world, identities: np.ndarray, renders: np.ndarray, mode: str = "world"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renders on the world's device: images float [B, 3, 64, 64] (0..255, whole levels), landmarks [B, 5, 2]
    and boxes [B, 4] (pixels, OpenCV's convention: pixel centres at integers)."""
    batch = world.render(identities, renders, mode=mode)
    images = rearrange(batch.images, "b h w c -> b c h w").float()
    kps = torch.from_numpy(np.asarray(batch.landmarks, np.float32)).to(images.device)
    boxes = torch.from_numpy(np.asarray(batch.boxes, np.float32)).to(images.device)
    return images, kps, boxes


def chroma_subsample(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """JPEG's 4:2:0 colour loss on the items where which [B] is True: images [B, 3, H, W] (0..255) to
    YCbCr, chroma averaged over 2 x 2 blocks and spread back, to RGB (whole levels)."""
    r, g, b = images.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = 0.564 * (b - y), 0.713 * (r - y)
    chroma = F.interpolate(F.avg_pool2d(torch.stack([cb, cr], 1), 2), scale_factor=2.0, mode="nearest")
    cb, cr = chroma.unbind(1)
    rgb = torch.stack([y + 1.403 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.773 * cb], 1).clamp(0.0, 255.0).round()
    return torch.where(which.view(-1, 1, 1, 1), rgb, images)


_BANKS: dict[tuple[int, str], torch.Tensor] = {}


def render_scenes(n: int, g: torch.Generator, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Face-free images [n, 3, size, size] (0..255, whole levels) on g's device: the renderer's background
    scenes (data_prep.faceworld.scenes, on its noise textures), with head-sized blobs of skin or other
    colours on some, some turned grey and pencil-like or posterised (the sketch and painting looks),
    under random exposure and white balance: hard negatives for the detector."""
    from data_prep.faceworld.attributes import ATTRIBUTES
    from data_prep.faceworld.scenes import PAINTERS, SCENE_UNIFORMS
    from data_prep.faceworld.shapes import NOISE_CHANNELS, noise_bank

    dev = g.device
    key = (size, str(dev))
    if key not in _BANKS:
        _BANKS[key] = torch.from_numpy(noise_bank(size)).to(dev)  # [C, T, S, S]
    bank = _BANKS[key]
    rand = lambda *shape: torch.rand(*shape, generator=g, device=dev)  # noqa: E731
    tiles = bank[:, torch.randint(0, bank.shape[1], (n,), generator=g, device=dev)]  # [C, n, S, S]
    shift = [int(v) for v in torch.randint(0, size, (2,), generator=g, device=dev)]
    tiles = tiles.roll(shift, dims=(2, 3))
    if bool(rand(()) < 0.5):
        tiles = tiles.transpose(2, 3)
    nz = dict(zip(NOISE_CHANNELS, tiles, strict=True))
    r = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    X, Y = r.view(1, 1, size), r.view(1, size, 1)  # the image frame of data_prep.faceworld.geometry
    scene = torch.randint(0, len(ATTRIBUTES["scene"]), (n,), generator=g, device=dev)
    u = rand(n, SCENE_UNIFORMS)
    img = torch.empty(n, 3, size, size, device=dev)
    for k, name in enumerate(ATTRIBUTES["scene"]):
        sel = (scene == k).nonzero().flatten()
        if len(sel):
            img[sel] = PAINTERS[name](X, Y, u[sel], {c: v[sel] for c, v in nz.items()}, 2.0 / size)
    # blobs: ellipses of skin-like or random colours (a head-sized patch of skin is not yet a face)
    for _ in range(3):
        cx, cy = rand(n, 1, 1) * 1.6 - 0.8, rand(n, 1, 1) * 1.6 - 0.8
        rx, ry = 0.1 + 0.4 * rand(n, 1, 1), 0.1 + 0.4 * rand(n, 1, 1)
        inside = (((X - cx) / rx).square() + ((Y - cy) / ry).square() < 1.0).float() * (rand(n, 1, 1) < 0.5)
        skin = torch.tensor([0.85, 0.65, 0.5], device=dev).view(1, 3, 1, 1) * (0.5 + 0.6 * rand(n, 1, 1, 1))
        colour = torch.where(rand(n, 1, 1, 1) < 0.6, skin, rand(n, 3, 1, 1))
        img = img + inside.unsqueeze(1) * (colour - img)
    look = torch.randint(0, 3, (n, 1, 1, 1), generator=g, device=dev)  # 0 as is, 1 pencil-grey, 2 posterised
    lum = (0.3 * img[:, 0:1] + 0.59 * img[:, 1:2] + 0.11 * img[:, 2:3]).clamp(0.0, 1.0)
    paper = torch.tensor([0.98, 0.96, 0.91], device=dev).view(1, 3, 1, 1)
    img = torch.where(look == 1, paper * (0.55 + 0.45 * lum), img)
    img = torch.where(look == 2, torch.floor(img.clamp(0.0, 1.0) * 5.0 + 0.5) / 5.0, img)
    gains = 0.8 + 0.4 * rand(n, 1, 1, 1) + 0.08 * (rand(n, 3, 1, 1) - 0.5)
    return (img * gains).clamp(0.0, 1.0).mul(255.0).round()


# ===================================================================================== training
@dataclass(frozen=True)
class RecogniserTrainConfig:
    """One recogniser's training: ArcFace over `classes` training identities (first_identity, +1, ...)."""

    net: RecogniserConfig = RecogniserConfig()
    classes: int = 12_000
    first_identity: int = 0  # class k is training identity first_identity + k
    batch: int = 512
    steps: int = 5_000
    lr: float = 2e-3
    weight_decay: float = 0.05  # AdamW, on conv and linear weights of the net
    warmup: int = 300
    scale: float = 32.0
    margin: float = 0.5
    margin_warmup: float = 0.15  # fraction of the steps over which the margin grows from 0
    kps_jitter: float = 0.7  # landmark noise (pixels of the 64 px render), per point and per face: the detector's
    flip: float = 0.5
    blur: float = 0.2  # probability of a half-resolution round trip
    noise: float = 3.0  # largest pixel-noise standard deviation (0..255)
    jpeg: float = 0.5  # probability of JPEG's chroma subsampling (photo folders are JPEG files)
    mode: str = "world"  # the renderer's attribute distribution
    views: int = 2  # augmented crops per render (batch / views renders a step)

    def __post_init__(self):
        if self.batch % self.views:
            raise ValueError(f"batch {self.batch} is not a multiple of views {self.views}")


@dataclass(frozen=True)
class DetectorTrainConfig:
    net: DetectorConfig = DetectorConfig()
    batch: int = 256
    steps: int = 6_000
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 300
    negatives: float = 0.25  # fraction of each batch without a face
    centre_radius: float = 1.0  # positives: anchor points within this many strides of the box centre
    kps_weight: float = 2.0
    jpeg: float = 0.5  # probability of JPEG's chroma subsampling (photo folders are JPEG files)
    mode: str = "world"


CONDITIONING = RecogniserTrainConfig()
# another block type and widths, other training identities (and the stage name seeds another init)
EVALUATION = RecogniserTrainConfig(
    net=RecogniserConfig(block="inverted", stem=32, widths=(48, 96, 192), depths=(2, 4, 2), expansion=3,
                         head_width=256),
    first_identity=500_000)
DETECTOR = DetectorTrainConfig()
_TINY = {"steps": 4, "warmup": 1, "batch": 8}
TINY_CONDITIONING = dataclasses.replace(
    CONDITIONING, net=RecogniserConfig(stem=8, widths=(8, 16, 16), depths=(1, 1, 1)), classes=16, **_TINY)
TINY_EVALUATION = dataclasses.replace(
    EVALUATION, net=RecogniserConfig(block="inverted", stem=8, widths=(8, 16), depths=(1, 1), expansion=2,
                                     head_width=16), classes=16, **_TINY)
TINY_DETECTOR = dataclasses.replace(
    DETECTOR, net=DetectorConfig(stem=8, widths=(8, 16, 16, 16), depths=(1, 1, 1, 1), neck=16, head=16), **_TINY)


def _init_seed(seed: int, stage: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}/init".encode()).digest()[:8], "little") & (2**63 - 1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def _on_device(net: nn.Module, device: torch.device) -> nn.Module:
    """The net on `device`; on CUDA channels-last, with cuDNN picking its fastest kernels (fixed shapes)."""
    net = net.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        net = net.to(memory_format=torch.channels_last)
    return net


class ClassRenders(WorldData):
    """The renders of a recogniser's steps: WorldData (prepared a step ahead in a background thread),
    with identities drawn from the class table (class k = training identity first_identity + k) in the
    training attribute distribution `cfg.mode`. make(step) -> (images float [R, 3, 64, 64] (0..255),
    landmarks [R, 5, 2], class labels [R]); R = batch / views."""

    def __init__(self, seed: int, stage: str, cfg: RecogniserTrainConfig, device: torch.device):
        super().__init__(seed, stage, cfg.batch // cfg.views, device)
        self.cfg = cfg

    def make(self, step: int, stream: str = "train", batch_size: int | None = None):
        digest = hashlib.sha256(f"{self.seed}/{self.stage}/{stream}/{step}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        n = batch_size or self.batch_size
        labels = rng.integers(0, self.cfg.classes, n)
        images, kps, _ = render_faces(self.world, self.cfg.first_identity + labels, rng.integers(0, 2**31, n),
                                      self.cfg.mode)
        return images, kps, torch.from_numpy(labels).to(images.device)


def recogniser_views(images: torch.Tensor, kps: torch.Tensor, labels: torch.Tensor, cfg: RecogniserTrainConfig,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`cfg.views` training crops per render -> crops [B, 3, 112, 112] (normalised as ArcFaceONNX does) and
    labels [B]: landmarks jittered, aligned, random flips, half-resolution round trips and pixel noise."""
    images = repeat(images, "r c h w -> (v r) c h w", v=cfg.views)
    kps = repeat(kps, "r p two -> (v r) p two", v=cfg.views)
    labels = repeat(labels, "r -> (v r)", v=cfg.views)
    b, dev = images.shape[0], images.device
    images = chroma_subsample(images, torch.rand(b, generator=g, device=dev) < cfg.jpeg)
    kps = kps + cfg.kps_jitter * (torch.randn(b, 5, 2, generator=g, device=dev)
                                  + torch.randn(b, 1, 2, generator=g, device=dev))
    crops = aligned_crops(images, kps)
    flip = torch.rand(b, generator=g, device=dev) < cfg.flip
    crops = torch.where(flip.view(b, 1, 1, 1), crops.flip(-1), crops)
    blur = torch.rand(b, generator=g, device=dev) < cfg.blur
    soft = F.interpolate(F.avg_pool2d(crops, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
    crops = torch.where(blur.view(b, 1, 1, 1), soft, crops)
    sigma = cfg.noise * torch.rand(b, 1, 1, 1, generator=g, device=dev)
    crops = (crops + sigma * torch.randn(crops.shape, generator=g, device=dev)).clamp(0.0, 255.0)
    return (crops - REC_MEAN) / REC_STD, labels


class RecogniserStage(Stage):
    """A recogniser: ArcFace training on renders; exports <world>/<pack_dir>/recogniser.onnx and pack.json."""

    name = "faces"
    pack_dir = PACK_DIR
    pack_name = "faceworld"
    full: ClassVar[RecogniserTrainConfig] = CONDITIONING
    tiny: ClassVar[RecogniserTrainConfig] = TINY_CONDITIONING

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        self.cfg = cfg = self.sized(self.full, self.tiny, steps_field="steps")
        self.set_steps(cfg.steps, cfg.batch, cfg.lr, cfg.warmup, min_lr_ratio=0.01)
        torch.manual_seed(_init_seed(opts.seed, self.name))
        self.net = _on_device(Recogniser(cfg.net), self.device)
        self.head = ArcFaceHead(cfg.classes, cfg.net.embed_dim, cfg.scale).to(self.device)
        groups = param_groups(self.net, cfg.weight_decay) + [{"params": list(self.head.parameters()),
                                                               "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr)
        self.data = ClassRenders(opts.seed, self.name, cfg, self.device)
        self.running_accuracy: float | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "head": self.head}

    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt

    def config(self) -> dict:
        return as_json_config(self.cfg)

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        cfg = self.cfg
        lr = self.set_lr(self.opt, step)
        self.net.train()
        x, labels = recogniser_views(*self.data.get(step), cfg, generator)
        margin = cfg.margin * min(1.0, step / max(1.0, cfg.margin_warmup * cfg.steps))
        with self.autocast():
            feats = self.net(_channels_last(x))
        loss, acc = self.head(feats, labels, margin)
        self.optimize(self.opt, loss, [*self.net.parameters(), *self.head.parameters()], max_norm=MAX_GRAD_NORM)
        acc = float(acc)
        self.running_accuracy = acc if self.running_accuracy is None else 0.98 * self.running_accuracy + 0.02 * acc
        return {"loss": float(loss.detach()), "accuracy": acc, "running_accuracy": self.running_accuracy,
                "margin": margin, "lr": lr}

    def export_paths(self, world: Path) -> list[Path]:
        return [world / self.pack_dir / RECOGNISER_FILE, world / self.pack_dir / PACK_JSON]

    def export(self, world: Path) -> list[Path]:
        self.net.eval()
        rec = export_recogniser(self.net, world / self.pack_dir / RECOGNISER_FILE)
        return [rec, write_pack_json(world / self.pack_dir, self.pack_name)]


class EvalRecogniserStage(RecogniserStage):
    """The evaluation recogniser (another architecture, seed and identities) -> <world>/eval_faces/."""

    name = "eval_faces"
    pack_dir = EVAL_PACK_DIR
    pack_name = "faceworld-eval"
    full = EVALUATION
    tiny = TINY_EVALUATION


_FLIP_KPS = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip


def detector_targets(boxes: torch.Tensor, kps: torch.Tensor, has_face: torch.Tensor, radius: float,
                     side: int = IMAGE_SIZE) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Training targets per stride 8, 16, 32 for images of `side` px: (positive mask [B, h, w], box
    distances [B, 4, h, w], landmark offsets [B, 10, h, w]), in strides, from the anchor points (x s, y s).

    A face belongs to stride 8 below 64 px (geometric mean of the box sides), 16 below 128, else 32;
    there, the anchor points within `radius` strides of the box centre (Chebyshev distance) and the
    nearest one are positives. boxes [B, 4], kps [B, 5, 2] in pixels; has_face [B] bool.
    """
    size = ((boxes[:, 2] - boxes[:, 0]).clamp_min(1) * (boxes[:, 3] - boxes[:, 1]).clamp_min(1)).sqrt()
    level = torch.where(size < 64, 8, torch.where(size < 128, 16, 32))
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    out = []
    for s in STRIDES:
        n = side // s
        a = torch.arange(n, device=boxes.device, dtype=torch.float32) * s
        ay, ax = a.view(1, n, 1).expand(1, n, n), a.view(1, 1, n).expand(1, n, n)
        dist = torch.maximum((ax - cx.view(-1, 1, 1)).abs(), (ay - cy.view(-1, 1, 1)).abs())  # [B, n, n]
        nearest = dist <= dist.flatten(1).min(1).values.view(-1, 1, 1)
        pos = ((dist <= radius * s) | nearest) & (has_face & (level == s)).view(-1, 1, 1)
        box_t = torch.stack([ax - boxes[:, 0].view(-1, 1, 1), ay - boxes[:, 1].view(-1, 1, 1),
                             boxes[:, 2].view(-1, 1, 1) - ax, boxes[:, 3].view(-1, 1, 1) - ay], 1) / s
        kx = kps[:, :, 0].view(-1, 5, 1, 1) - ax.unsqueeze(1)
        ky = kps[:, :, 1].view(-1, 5, 1, 1) - ay.unsqueeze(1)
        kps_t = rearrange(torch.stack([kx, ky], 2), "b p two h w -> b (p two) h w") / s
        out.append((pos, box_t, kps_t))
    return out


def detector_loss(outputs: list[torch.Tensor], targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  kps_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE on every anchor point (summed per image, averaged over images), L1 on the positives' box
    distances and landmark offsets (averaged over positives)."""
    cls, box, kp, n_pos, hits, n_img = 0.0, 0.0, 0.0, 0, 0.0, outputs[0].shape[0]
    for out, (pos, box_t, kps_t) in zip(outputs, targets, strict=True):
        out = out.float()
        logit = out[:, 0]
        cls = cls + F.binary_cross_entropy_with_logits(logit, pos.float(), reduction="sum") / n_img
        m = pos.unsqueeze(1)
        box = box + ((out[:, 1:5] - box_t).abs() * m).sum()
        kp = kp + ((out[:, 5:15] - kps_t).abs() * m).sum()
        n_pos += int(pos.sum())
        hits += float(((logit > 0) == pos).float().mean())
    box, kp = box / max(4 * n_pos, 1), kp / max(10 * n_pos, 1)
    loss = cls + box + kps_weight * kp
    return loss, {"loss": float(loss.detach()), "cls": float(cls.detach()), "box_l1": float(box.detach()),
                  "kps_l1": float(kp.detach()),
                  "cell_accuracy": hits / len(outputs)}


def flip_faces(images: torch.Tensor, kps: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror the items where flip [B] is True: images [B, C, H, W], landmarks [B, 5, 2] (image-left and
    image-right swap places) and boxes [B, 4], in OpenCV's pixel convention (x -> W - 1 - x)."""
    w = images.shape[-1] - 1.0
    fkps = kps[:, _FLIP_KPS].clone()
    fkps[..., 0] = w - fkps[..., 0]
    fboxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    return (torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images), torch.where(flip.view(-1, 1, 1), fkps, kps),
            torch.where(flip.view(-1, 1), fboxes, boxes))


def detector_batch(images: torch.Tensor, kps: torch.Tensor, boxes: torch.Tensor, cfg: DetectorTrainConfig,
                   g: torch.Generator) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Detector inputs [B, 3, 64, 64] (normalised as SCRFD does) and their targets: the face renders
    (randomly flipped) and face-free scenes drawn here; every random number from `g`."""
    dev = g.device
    n_face = images.shape[0]
    n_neg = cfg.batch - n_face
    images, kps, boxes = flip_faces(images, kps, boxes, torch.rand(n_face, generator=g, device=dev) < 0.5)
    if n_neg:
        images = torch.cat([images, render_scenes(n_neg, g, images.shape[-1])])
        kps = torch.cat([kps, torch.zeros(n_neg, 5, 2, device=dev)])
        boxes = torch.cat([boxes, torch.zeros(n_neg, 4, device=dev)])
    images = chroma_subsample(images, torch.rand(cfg.batch, generator=g, device=dev) < cfg.jpeg)
    has_face = torch.arange(cfg.batch, device=dev) < n_face
    targets = detector_targets(boxes, kps, has_face, cfg.centre_radius, images.shape[-1])
    return (images - DET_MEAN) / DET_STD, targets


class DetectorStage(Stage):
    """The detector: trained on renders and face-free scenes; exports <world>/faces/detector.onnx."""

    name = "face_detector"

    def __init__(self, opts: StageOptions):
        super().__init__(opts)
        self.cfg = cfg = self.sized(DETECTOR, TINY_DETECTOR, steps_field="steps")
        self.set_steps(cfg.steps, cfg.batch, cfg.lr, cfg.warmup, min_lr_ratio=0.01)
        torch.manual_seed(_init_seed(opts.seed, self.name))
        self.net = _on_device(Detector(cfg.net), self.device)
        self.opt = torch.optim.AdamW(param_groups(self.net, cfg.weight_decay), lr=cfg.lr)
        # face renders of random training identities (world mode), a step ahead; scenes drawn per step
        self.data = WorldData(opts.seed, self.name, cfg.batch - int(round(cfg.batch * cfg.negatives)), self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizer(self) -> torch.optim.Optimizer:
        return self.opt

    def config(self) -> dict:
        return as_json_config(self.cfg)

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        lr = self.set_lr(self.opt, step)
        self.net.train()
        renders = self.data.get(step).renders
        images = rearrange(renders.images, "b h w c -> b c h w").float()
        kps = torch.from_numpy(np.asarray(renders.landmarks, np.float32)).to(images.device)
        boxes = torch.from_numpy(np.asarray(renders.boxes, np.float32)).to(images.device)
        x, targets = detector_batch(images, kps, boxes, self.cfg, generator)
        with self.autocast():
            outputs = self.net(_channels_last(x))
        loss, logs = detector_loss(outputs, targets, self.cfg.kps_weight)
        self.optimize(self.opt, loss, self.net.parameters(), max_norm=MAX_GRAD_NORM)
        return {**logs, "lr": lr}

    def export_paths(self, world: Path) -> list[Path]:
        return [world / PACK_DIR / DETECTOR_FILE]

    def export(self, world: Path) -> list[Path]:
        self.net.eval()
        return [export_detector(self.net, world / PACK_DIR / DETECTOR_FILE)]


# ================================================================================= verification
def load_world_analyzer(world_dir: str | os.PathLike, recogniser: str = "conditioning",
                        providers: Sequence[Any] | None = ("CPUExecutionProvider",)):
    """encoder.face_analysis.FaceAnalyzer of the world: faces/ (detector, pack.json policy) with the
    conditioning recogniser, or with eval_faces/'s evaluation recogniser (recogniser="evaluation")."""
    from encoder.face_analysis import FaceAnalyzer, _session_options

    world_dir = Path(world_dir)
    analyzer = FaceAnalyzer.from_pack(world_dir / PACK_DIR, providers=providers)
    if recogniser == "conditioning":
        return analyzer
    if recogniser != "evaluation":
        raise ValueError(f"recogniser must be 'conditioning' or 'evaluation', got {recogniser!r}")
    from insightface.model_zoo import model_zoo

    rec = model_zoo.get_model(str(world_dir / EVAL_PACK_DIR / RECOGNISER_FILE), providers=list(providers or []) or None,
                              sess_options=_session_options())
    return FaceAnalyzer(analyzer.detector, rec, None, policy=analyzer.policy)


def pair_scores(features: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every unordered pair: (same-label pairs [G], different-label pairs [I]).

    features [N, D] (normalised here); a pair involving an invalid item (valid [N] False: no face
    found) scores -2, below any cosine, so it is never accepted.
    """
    x = np.asarray(features, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    valid = np.ones(len(x), bool) if valid is None else np.asarray(valid, bool)
    same, diff = [], []
    for lo in range(0, len(x), chunk):
        sims = x[lo:lo + chunk] @ x.T  # [c, N]
        rows = np.arange(lo, min(lo + chunk, len(x)))[:, None]
        cols = np.arange(len(x))[None, :]
        sims = np.where(valid[rows] & valid[cols], sims, -2.0)
        upper = cols > rows
        eq = labels[rows] == labels[cols]
        same.append(sims[upper & eq])
        diff.append(sims[upper & ~eq])
    return np.concatenate(same), np.concatenate(diff)


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """(TAR, threshold): the threshold is the lowest at which at most `far` of the impostor pairs score
    above it; TAR is the fraction of genuine pairs scoring above it."""
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]
    if len(imp) == 0 or len(genuine) == 0:
        raise ValueError("need genuine and impostor pairs")
    k = int(math.floor(far * len(imp)))  # impostors allowed above the threshold
    threshold = float(imp[min(k, len(imp) - 1)])
    return float(np.mean(np.asarray(genuine) > threshold)), threshold


def similarity_summary(scores: np.ndarray, bins: int = 40) -> dict:
    """Mean, standard deviation, quantiles and a histogram over [-1, 1] of pair similarities."""
    s = np.asarray(scores, np.float64)
    qs = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
    hist, edges = np.histogram(np.clip(s, -1.0, 1.0), bins=bins, range=(-1.0, 1.0))
    return {"pairs": int(len(s)), "mean": float(s.mean()), "std": float(s.std()),
            "quantiles": {str(q): float(np.quantile(s, q)) for q in qs},
            "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": hist.tolist()}}


def verification_report(features: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                        far: float = 1e-3) -> dict:
    """TAR at `far`, its threshold, and the same- / different-identity similarity distributions."""
    genuine, impostor = pair_scores(features, labels, valid)
    tar, threshold = tar_at_far(genuine, impostor, far)
    return {"far": far, "tar": tar, "threshold": threshold,
            "same": similarity_summary(genuine), "different": similarity_summary(impostor)}


def colour_histograms(crops: np.ndarray, bins: int = 8) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, bins^3]: joint RGB histograms, square-rooted (Hellinger), unit length."""
    q = (np.asarray(crops).astype(np.int64) * bins) // 256
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.stack([np.bincount(i.ravel(), minlength=bins ** 3) for i in idx]).astype(np.float64)
    hist = np.sqrt(hist / np.maximum(hist.sum(1, keepdims=True), 1))
    return hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)


def render_test_photos(world_seed: int, identities: int, renders: int = 5, split: str = "test",
                       mode: str = "portrait", first: int | None = None, batch: int = 256
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photos of `identities` people of `split` (from its first index, or `first`), `renders` each:
    (uint8 [N, 64, 64, 3] RGB, identity labels [N], landmarks [N, 5, 2]); rendered on the CPU."""
    from data_prep.faceworld.attributes import split_range

    start = split_range(split)[0] if first is None else first
    ids = np.repeat(np.arange(start, start + identities, dtype=np.int64), renders)
    rs = np.tile(np.arange(renders, dtype=np.int64), identities)
    world = _world(world_seed, torch.device("cpu"))
    images, kps = [], []
    for lo in range(0, len(ids), batch):
        b = world.render(ids[lo:lo + batch], rs[lo:lo + batch], mode=mode)
        images.append(b.images.cpu().numpy())
        kps.append(np.asarray(b.landmarks, np.float32))
    return np.concatenate(images), ids, np.concatenate(kps)


def evaluate_recogniser(analyzer, photos: np.ndarray, labels: np.ndarray, landmarks: np.ndarray | None = None,
                        far: float = 1e-3) -> dict:
    """Verification of a FaceAnalyzer on photos (uint8 [N, H, W, 3] RGB) of known identities (labels [N]).

    Every photo goes through analyzer.analyze (detector, alignment, recogniser); a photo without a
    usable face counts as rejected in all its pairs. Returns {"recogniser": verification_report,
    "colour_histogram": the same for colour histograms of the same aligned crops, "detected": fraction
    of photos with a face, "landmark_error_px": mean distance of the detected to the true landmarks}.
    """
    from encoder.face_analysis import FaceRejected

    n = len(photos)
    feats = np.zeros((n, EMBED_DIM), np.float32)
    crops = np.zeros((n, CROP, CROP, 3), np.uint8)
    valid = np.zeros(n, bool)
    errors = []
    for i, img in enumerate(photos):
        try:
            face = analyzer.analyze(np.ascontiguousarray(img))
        except FaceRejected:
            continue
        feats[i], crops[i], valid[i] = face.embedding, face.aligned, True
        if landmarks is not None:
            errors.append(float(np.linalg.norm(face.kps - landmarks[i], axis=1).mean()))
    if not valid.any():
        raise ValueError("no face was found in any photo")
    return {"recogniser": verification_report(feats, labels, valid, far),
            "colour_histogram": verification_report(colour_histograms(crops), labels, valid, far),
            "photos": n, "identities": int(len(np.unique(labels))), "detected": float(valid.mean()),
            "landmark_error_px": float(np.mean(errors)) if errors else None}


def detection_report(analyzer, photos: np.ndarray, negatives: np.ndarray) -> dict:
    """Fraction of face photos with a face found, and of face-free images with any face found."""
    def found(img: np.ndarray) -> bool:
        return len(analyzer.analyze_all(np.ascontiguousarray(img))) > 0

    return {"faces_found": float(np.mean([found(p) for p in photos])),
            "false_positive_rate": float(np.mean([found(p) for p in negatives]))}


def face_quality(world_dir: str | os.PathLike, seed: int, identities: int = 1000, renders: int = 5,
                 far: float = 1e-3, jpeg_quality: int | None = 95, negatives: int | None = None) -> dict:
    """The world's face models on test identities of renderer seed `seed` (photo-folder renders, JPEG like
    the folders unless jpeg_quality is None): {"conditioning": evaluate_recogniser report, "evaluation":
    the same with the evaluation recogniser, "detection": detection_report on the photos and face-free
    scenes, "setup": what was measured}."""
    import io

    from PIL import Image

    photos, labels, kps = render_test_photos(seed, identities, renders)
    if jpeg_quality is not None:
        def jpeg(img: np.ndarray) -> np.ndarray:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=jpeg_quality)
            return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

        photos = np.stack([jpeg(p) for p in photos])
    n_neg = identities if negatives is None else negatives
    g = torch.Generator().manual_seed(seed)
    scenes = render_scenes(n_neg, g).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    out: dict[str, Any] = {"setup": {"renderer_seed": seed, "split": "test", "identities": identities,
                                     "renders_per_identity": renders, "mode": "portrait", "far": far,
                                     "jpeg_quality": jpeg_quality, "face_free_scenes": n_neg}}
    for which in ("conditioning", "evaluation"):
        analyzer = load_world_analyzer(world_dir, which)
        out[which] = evaluate_recogniser(analyzer, photos, labels, kps, far)
        if which == "conditioning":
            out["detection"] = detection_report(analyzer, photos, scenes)
    return out


if __name__ == "__main__":  # python -m pretrain.world.faces WORLD_DIR [SEED [IDENTITIES]]: the face figures as JSON
    import sys

    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m pretrain.world.faces WORLD_DIR [SEED [IDENTITIES]]")
    report = face_quality(args[0], int(args[1]) if len(args) > 1 else 1, int(args[2]) if len(args) > 2 else 1000)
    for key in ("conditioning", "evaluation"):
        for part in ("recogniser", "colour_histogram"):
            for side in ("same", "different"):
                report[key][part][side].pop("histogram")
    print(json.dumps(report, indent=1))
