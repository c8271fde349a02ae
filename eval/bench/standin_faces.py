"""Stand-in face models: an insightface model pack for tests and benchmarks, and a real-photo detector adapter.

The ONNX files written here have the input/output signatures of the pack's models, so insightface's
own routing (model_zoo.get_model) and decoding (SCRFD anchors, distance decoding, NMS, ArcFaceONNX
and Attribute pre-processing) run on them unchanged:

* a SCRFD-style detector (input "input.1" [1, 3, ?, ?], 9 outputs: scores, box distances and
  landmark distances for strides 8, 16 and 32 with 2 anchors) whose weights are set by hand so that
  it "detects" a coloured marker cell. In the detector's input image, an 8 x 8 cell at
  (row i, col j) (pixels [8i, 8i+8) x [8j, 8j+8)) filled with colour (R, G, B) gives
  score = (R - G) / 255 (clipped to [0, 1]) and a face box of FACE_W x FACE_H times
  f = 1 + B / 255, centred on the cell centre, with the ArcFace template's five landmarks scaled
  into it. Grey pixels (R = G) score 0; only the stride-8 level ever fires.
  `expected_detection` gives the box / landmarks for a marker; `paint_marker` draws one.
* an ArcFace-style recogniser (input [N, 3, 112, 112] -> [N, 512]): a fixed random linear projection
  of the 4 x 4-pooled normalised pixels. Identical crops give identical embeddings.
* a genderage-style model (input [N, 3, 96, 96] -> [N, 3]) answering a fixed gender and age.

Those are written by hand and cost next to nothing. For benchmarks, torch modules with the compute of
the real models, exported with `export_onnx`: `StandInScrfd` (the marker detector, optionally behind
`ScrfdTrunk`, a SCRFD-10G-shaped backbone + PAFPN + heads whose outputs never win a detection) and
`IResNet` (insightface's arcface_torch recogniser layout, random weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from encoder.align import ARCFACE_TEMPLATE_112

OPSET = 13  # the hand-written models
EXPORT_OPSET = 17  # the exported torch modules
IR_VERSION = 8
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
CELL = 8  # the marker cell of the stride-8 level
FACE_W, FACE_H = 64.0, 80.0  # face box at f = 1 (blue 0), in detector-input pixels
EMBED_DIM = 512
NOISE_CEILING = 0.1  # StandInScrfd's trunk scores stay below this; insightface's threshold here is 0.2
_BLOB_STD = 128.0  # SCRFD pre-processing: (pixel - 127.5) / 128, RGB order


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


# --------------------------------------------------------------------------------------- detector
def _marker_head() -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv (15 outputs: score, 4 distances, 10 landmark distances) on pooled blob channels."""
    w = np.zeros((15, 3), np.float64)
    b = np.zeros(15, np.float64)
    k = _BLOB_STD / 255.0  # blob difference -> pixel difference / 255
    w[0] = [k, -k, 0.0]  # score = (R - G) / 255
    # f = 1 + B / 255 = 1.5 + k * blob_B
    def affine(base: float, const: float) -> tuple[float, float]:
        """Distance const + base * f, divided by the stride the decoder multiplies back."""
        return base * k / CELL, (const + base * 1.5) / CELL

    half = CELL / 2.0
    for c, (base, const) in enumerate([(FACE_W / 2, -half), (FACE_H / 2, -half),
                                       (FACE_W / 2, half), (FACE_H / 2, half)]):
        w[1 + c, 2], b[1 + c] = affine(base, const)
    scale = FACE_W / 112.0
    for p, (tx, ty) in enumerate(ARCFACE_TEMPLATE_112.astype(np.float64)):
        for a, t in enumerate((tx, ty)):
            w[5 + 2 * p + a, 2], b[5 + 2 * p + a] = affine((t - 56.0) * scale, half)
    return w.astype(np.float32), b.astype(np.float32)


def write_scrfd(path: str | Path) -> Path:
    """The marker detector, with det_10g's input name and output layout (9 rank-2 outputs)."""
    nodes, inits = [], []
    score_outs, bbox_outs, kps_outs = [], [], []
    inits += [_const("clip_lo", np.float32(0.0)), _const("clip_hi", np.float32(1.0))]
    head_w, head_b = _marker_head()
    for s in STRIDES:
        live = s == CELL
        w = head_w if live else np.zeros_like(head_w)
        b = head_b if live else np.zeros_like(head_b)
        inits += [_const(f"head{s}_w", w.reshape(15, 3, 1, 1)), _const(f"head{s}_b", b),
                  _const(f"shape{s}", np.array([-1, 15], np.int64))]
        for name, lo, hi in (("sc", 0, 1), ("bb", 1, 5), ("kp", 5, 15)):
            inits += [_const(f"{name}{s}_start", np.array([lo], np.int64)),
                      _const(f"{name}{s}_end", np.array([hi], np.int64))]
        inits.append(_const(f"axis1_{s}", np.array([1], np.int64)))
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], name=f"pool{s}",
                             kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Conv", [f"pool{s}", f"head{s}_w", f"head{s}_b"], [f"head{s}"],
                             name=f"head{s}"),
            helper.make_node("Transpose", [f"head{s}"], [f"nhwc{s}"], name=f"nhwc{s}", perm=[0, 2, 3, 1]),
        ]
        # two anchors per position, anchor fastest: [1, h, w, 1, 15] -> [1, h, w, 2, 15] -> [h*w*2, 15]
        inits.append(_const(f"axis3_{s}", np.array([3], np.int64)))
        nodes += [
            helper.make_node("Unsqueeze", [f"nhwc{s}", f"axis3_{s}"], [f"a{s}"], name=f"anch{s}"),
            helper.make_node("Concat", [f"a{s}"] * NUM_ANCHORS, [f"aa{s}"], name=f"cat{s}", axis=3),
            helper.make_node("Reshape", [f"aa{s}", f"shape{s}"], [f"flat{s}"], name=f"flat{s}"),
            helper.make_node("Slice", [f"flat{s}", f"sc{s}_start", f"sc{s}_end", f"axis1_{s}"],
                             [f"raw_score{s}"], name=f"slsc{s}"),
            helper.make_node("Clip", [f"raw_score{s}", "clip_lo", "clip_hi"], [f"score_{s}"],
                             name=f"clip{s}"),
            helper.make_node("Slice", [f"flat{s}", f"bb{s}_start", f"bb{s}_end", f"axis1_{s}"],
                             [f"bbox_{s}"], name=f"slbb{s}"),
            helper.make_node("Slice", [f"flat{s}", f"kp{s}_start", f"kp{s}_end", f"axis1_{s}"],
                             [f"kps_{s}"], name=f"slkp{s}"),
        ]
        score_outs.append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, [f"n{s}", 1]))
        bbox_outs.append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, [f"n{s}", 4]))
        kps_outs.append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, [f"n{s}", 10]))
    graph = helper.make_graph(
        nodes, "marker_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        score_outs + bbox_outs + kps_outs, initializer=inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def expected_detection(row: int, col: int, blue: int = 0, scale: float = 1.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Box [4] and landmarks [5, 2] the marker detector reports for a marker at cell (row, col).

    `scale` is original pixels per detector-input pixel (1 / det_scale), so the result is in the
    original photo's coordinates.
    """
    f = 1.0 + blue / 255.0
    cx, cy = col * CELL + CELL / 2.0, row * CELL + CELL / 2.0
    box = np.array([cx - f * FACE_W / 2, cy - f * FACE_H / 2, cx + f * FACE_W / 2, cy + f * FACE_H / 2])
    kps = np.array([cx, cy]) + f * (ARCFACE_TEMPLATE_112.astype(np.float64) - 56.0) * (FACE_W / 112.0)
    return (box * scale).astype(np.float32), (kps * scale).astype(np.float32)


def paint_marker(img: np.ndarray, row: int, col: int, color=(255, 0, 0), scale: int = 1) -> np.ndarray:
    """Fill the original-image block that becomes detector cell (row, col) (scale: see above)."""
    c = CELL * scale
    img[row * c:(row + 1) * c, col * c:(col + 1) * c] = color
    return img


# ------------------------------------------------------------------------------------- recogniser
def projection_matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3 * 28 * 28, EMBED_DIM)) / np.sqrt(3 * 28 * 28)).astype(np.float32)


def write_arcface(path: str | Path, seed: int = 0) -> Path:
    """ArcFace signature: input.1 [N, 3, 112, 112] -> [N, 512], a fixed random projection."""
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], name="pool", kernel_shape=[4, 4],
                         strides=[4, 4]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "proj_w"], ["683"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "projection_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", EMBED_DIM])],
        initializer=[_const("proj_w", projection_matrix(seed))])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def reference_embedding(crop_rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """What write_arcface's model computes for one 112x112 RGB crop, L2-normalised (numpy)."""
    x = (crop_rgb.astype(np.float32) - 127.5) / 127.5  # ArcFaceONNX: mean 127.5, std 127.5, RGB
    x = x.transpose(2, 0, 1).reshape(3, 28, 4, 28, 4).mean(axis=(2, 4)).reshape(-1)
    e = x @ projection_matrix(seed)
    return (e / np.linalg.norm(e)).astype(np.float32)


# -------------------------------------------------------------------------------------- genderage
def write_genderage(path: str | Path, gender: str = "male", age: int = 35) -> Path:
    """genderage signature: data [N, 3, 96, 96] -> [N, 3] (female, male, age / 100)."""
    bias = np.array([0.9, 0.1, age / 100.0] if gender == "female" else [0.1, 0.9, age / 100.0], np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "ga_w", "ga_b"], ["fc1"], name="fc1"),
    ]
    graph = helper.make_graph(
        nodes, "constant_genderage",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 96, 96])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 3])],
        initializer=[_const("ga_w", np.zeros((3, 3), np.float32)), _const("ga_b", bias)])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def make_pack(folder: str | Path, *, detector: str | None = "det_10g.onnx",
              recogniser: str | None = "w600k_r50.onnx", genderage: str | None = "genderage.onnx",
              gender: str = "male", age: int = 35) -> Path:
    """A buffalo_l-like folder of the stand-in models (pass None to leave one out)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if detector:
        write_scrfd(folder / detector)
    if recogniser:
        write_arcface(folder / recogniser)
    if genderage:
        write_genderage(folder / genderage, gender=gender, age=age)
    return folder


# --------------------------------------------------- stand-ins with real compute (torch -> ONNX)
def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=False)
        self.down = None if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + (x if self.down is None else self.down(x)))


class ScrfdTrunk(nn.Module):
    """SCRFD-10G-like backbone + PAFPN + heads; returns (cls, box, kps) maps per stride 8, 16, 32."""

    def __init__(self, stem: int = 56, planes=(56, 88, 88, 224), blocks=(2, 3, 2, 3), neck: int = 56,
                 head: int = 80, stacked: int = 3):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, stem // 2, 3, 2), _conv_bn(stem // 2, stem), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], stem
        for i, (p, n) in enumerate(zip(planes, blocks)):
            stages.append(nn.Sequential(*[_BasicBlock(cin if j == 0 else p, p, 2 if (i > 0 and j == 0) else 1)
                                          for j in range(n)]))
            cin = p
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList([_conv_bn(c, neck, 1) for c in planes[1:]])
        self.fpn = nn.ModuleList([_conv_bn(neck, neck) for _ in planes[1:]])
        self.down = nn.ModuleList([_conv_bn(neck, neck, 3, 2) for _ in planes[2:]])
        self.pafpn = nn.ModuleList([_conv_bn(neck, neck) for _ in planes[2:]])
        self.towers = nn.ModuleList([nn.Sequential(*[_conv_bn(neck if j == 0 else head, head)
                                                     for j in range(stacked)]) for _ in STRIDES])
        self.cls = nn.ModuleList([nn.Conv2d(head, NUM_ANCHORS, 3, 1, 1) for _ in STRIDES])
        self.box = nn.ModuleList([nn.Conv2d(head, 4 * NUM_ANCHORS, 3, 1, 1) for _ in STRIDES])
        self.kps = nn.ModuleList([nn.Conv2d(head, 10 * NUM_ANCHORS, 3, 1, 1) for _ in STRIDES])

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:
                feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        outs = [conv(f) for conv, f in zip(self.fpn, lat)]
        for i in range(len(outs) - 1):  # bottom-up (PAFPN)
            outs[i + 1] = self.pafpn[i](outs[i + 1] + self.down[i](outs[i]))
        return [(self.cls[i](t), self.box[i](t), self.kps[i](t))
                for i, t in enumerate(tower(o) for tower, o in zip(self.towers, outs))]


def _flat(t: torch.Tensor, width: int) -> torch.Tensor:
    """[1, A * width, h, w] -> [h * w * A, width], anchor fastest (SCRFD's output layout)."""
    return t.permute(0, 2, 3, 1).reshape(-1, width)


class StandInScrfd(nn.Module):
    """write_scrfd's marker detector as a torch module (same decoded detections), optionally with a trunk.

    forward: input.1 [1, 3, H, W] -> 9 outputs (scores [n_s, 1], boxes [n_s, 4], landmarks [n_s, 10]
    for each stride s). With a trunk, at every anchor the output is the trunk's (score =
    NOISE_CEILING * sigmoid(logit), its box and landmarks) where that score beats the marker's, else
    the marker's (a Where, so no graph optimiser can fold the trunk away). Below a detection threshold
    above NOISE_CEILING the decoded detections are exactly the marker model's.
    """

    def __init__(self, trunk: ScrfdTrunk | None):
        super().__init__()
        w, b = _marker_head()
        self.trunk = trunk
        for s in STRIDES:
            live = s == CELL
            self.register_buffer(f"w{s}", torch.from_numpy(w.reshape(15, 3, 1, 1) * live))
            self.register_buffer(f"b{s}", torch.from_numpy(b * live))

    def forward(self, x):
        heads = self.trunk(x) if self.trunk is not None else None
        scores, boxes, kpss = [], [], []
        for i, s in enumerate(STRIDES):
            m = F.conv2d(F.avg_pool2d(x, s, s), getattr(self, f"w{s}"), getattr(self, f"b{s}"))
            m = m.permute(0, 2, 3, 1).unsqueeze(3)
            m = torch.cat([m] * NUM_ANCHORS, dim=3).reshape(-1, 15)
            score, box, kps = m[:, 0:1].clamp(0.0, 1.0), m[:, 1:5], m[:, 5:15]
            if heads is not None:
                cls_t, box_t, kps_t = heads[i]
                score_t = NOISE_CEILING * torch.sigmoid(_flat(cls_t, 1))
                live = score_t > score  # only where the marker is not a candidate (score < NOISE_CEILING)
                score = torch.where(live, score_t, score)
                box = torch.where(live, _flat(box_t, 4), box)
                kps = torch.where(live, _flat(kps_t, 10), kps)
            scores.append(score)
            boxes.append(box)
            kpss.append(kps)
        return tuple(scores + boxes + kpss)


class _IBasicBlock(nn.Module):
    """arcface_torch's IBasicBlock: BN, conv, BN, PReLU, conv(stride), BN, + shortcut."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        nn.init.constant_(self.bn3.weight, 0.2)  # keeps the random residual stream bounded
        self.down = (None if stride == 1 and cin == planes else
                     nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.down is None else self.down(x))


class IResNet(nn.Module):
    """insightface's IResNet (arcface_torch/backbones/iresnet.py): [N, 3, 112, 112] -> [N, 512]."""

    def __init__(self, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), emb: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu = nn.PReLU(widths[0])
        blocks, cin = [], widths[0]
        for n, w in zip(layers, widths):
            for j in range(n):
                blocks.append(_IBasicBlock(cin, w, 2 if j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin * 7 * 7, emb)
        self.features = nn.BatchNorm1d(emb)

    def forward(self, x):
        x = self.blocks(self.prelu(self.bn1(self.conv1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def export_onnx(module: nn.Module, dummy: torch.Tensor, path: Path, input_name: str, outputs: list[str],
                dynamic_axes: dict) -> Path:
    """Export `module` (eval mode, constant folding, TorchScript exporter) with one input `dummy`."""
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), input_names=[input_name], output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=EXPORT_OPSET, do_constant_folding=True,
                          dynamo=False)
    return path


# --------------------------------------------------------------------------- real-photo detector
class MTCNNDetector:
    """facenet-pytorch's MTCNN behind insightface's detector interface (tests only).

    detect(img_bgr, input_size=...) -> (dets [N, 5] x1 y1 x2 y2 score, kps [N, 5, 2]), best first.
    MTCNN's landmarks come in insightface's order (left eye, right eye, nose, left/right mouth).
    """

    def __init__(self, min_face_size: int = 20):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size, post_process=False)

    def detect(self, img_bgr: np.ndarray, input_size=None, max_num: int = 0):
        rgb = np.ascontiguousarray(np.asarray(img_bgr)[:, :, ::-1])
        boxes, probs, points = self.mtcnn.detect(rgb, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        dets = np.concatenate([np.asarray(boxes, np.float32),
                               np.asarray(probs, np.float32).reshape(-1, 1)], axis=1)
        kps = np.asarray(points, np.float32).reshape(-1, 5, 2)
        order = np.argsort(-dets[:, 4], kind="stable")
        dets, kps = dets[order], kps[order]
        if max_num > 0:
            dets, kps = dets[:max_num], kps[:max_num]
        return dets, kps
