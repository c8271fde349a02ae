"""A tiny identity world with every part eval.world needs: random weights in the world layout.

    make_eval_world(root)   tests/tiny_world.py's folder (UViT, pixel space, world-CLIP) plus
        faces/        a detector that reports the renders' canonical face in every image (SCRFD's
                      signature, det size 640) + a projection recogniser (eval/bench/standin_faces)
        eval_faces/   another projection recogniser (the evaluation recogniser)
        attributes/   an attribute classifier with random weights (pretrain.world.attributes)
        faceid_encoder/  an identity module with open gates

The canonical face: the mean face box (widened to 36 px, so that today's 32 px minimum passes) and
the mean 5 landmarks of 64 x 64 portraits, which the detector returns for any 64 x 64 image (at
detector input 640, so ten times larger there). Identity scores are then real cosines of the
projection recogniser on aligned crops, just not meaningful ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from eval.bench.standin_faces import write_arcface
from tests.tiny_world import make_tiny_world

DET_SIZE, IMAGE = 640, 64
STRIDES, ANCHORS = (8, 16, 32), 2
# mean of 64 portraits (data_prep.faceworld): eyes, nose, mouth corners, in 64 x 64 pixels
LANDMARKS = np.array([[27.6, 28.6], [36.3, 28.4], [32.1, 31.9], [28.2, 34.9], [36.0, 34.8]], np.float32)
BOX = np.array([14.0, 12.0, 50.0, 48.0], np.float32)


def write_canonical_detector(path: Path) -> Path:
    """SCRFD-signature ONNX (input.1 [1, 3, ?, ?], 9 rank-2 outputs) whose outputs are constants for
    a 640 x 640 input: one face, BOX and LANDMARKS of a 64 x 64 image scaled to 640."""
    f = DET_SIZE / IMAGE
    box, kps = BOX * f, LANDMARKS * f
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    outputs = {}
    for s in STRIDES:
        n = (DET_SIZE // s) ** 2 * ANCHORS
        score, dist, kp = np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
        if s == STRIDES[0]:
            row, col = int(cy // s), int(cx // s)
            ax, ay = col * s, row * s  # the anchor centre
            for a in range(ANCHORS):
                i = (row * (DET_SIZE // s) + col) * ANCHORS + a
                score[i] = 0.9
                dist[i] = np.array([ax - box[0], ay - box[1], box[2] - ax, box[3] - ay]) / s
                kp[i] = ((kps - np.array([ax, ay])) / s).reshape(-1)
        outputs.update({f"score_{s}": score, f"bbox_{s}": dist, f"kps_{s}": kp})
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    nodes += [helper.make_node("Add", [f"const_{k}", "nothing"], [k]) for k in names]
    inits = [numpy_helper.from_array(np.float32(0.0), "zero")]
    inits += [numpy_helper.from_array(outputs[k], f"const_{k}") for k in names]
    graph = helper.make_graph(
        nodes, "canonical_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(outputs[k].shape)) for k in names],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_eval_world(root: str | Path, seed: int = 0) -> Path:
    from encoder.config import IdentityConfig
    from encoder.identity import IdentityModule
    from models.uvit import UViTConfig
    from pretrain.world.attributes import EXPORT_DIR, AttributeClassifier, AttributeNet, AttributeNetConfig

    root = make_tiny_world(root, seed)
    write_canonical_detector(root / "faces" / "detector.onnx")
    write_arcface(root / "faces" / "recogniser.onnx", seed=seed)
    write_arcface(root / "eval_faces" / "recogniser.onnx", seed=seed + 1)
    for pack in ("faces", "eval_faces"):
        (root / pack / "pack.json").write_text(json.dumps({"min_face_size": 12, "min_det_score": 0.5}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AttributeClassifier(AttributeNet(AttributeNetConfig.tiny())).save(root / EXPORT_DIR)
        uvit = UViTConfig.from_dict(json.loads((root / "model_configs.json").read_text())["uvit"])
        module = IdentityModule(IdentityConfig.for_uvit(uvit, num_tokens=2, hidden_dim=16))
        with torch.no_grad():
            module.gate.fill_(0.5)
        module.save(root / "faceid_encoder")
    return root
