"""Personalisation benchmark: seconds per identity for what `train.py -d PHOTOS -o OUT` does after the
face models are loaded (decode, detect, align, embed, genderage, write the record).

    python -m eval.bench.identity --photos 10 --repeats 3 --out eval/results/identity.json
    python -m eval.bench.identity --tiny --photos 3 --repeats 1      # smoke test of the script

No real insightface pack is available, so the script writes a stand-in pack into a temporary folder,
with the real input/output signatures (insightface's own model_zoo routing, SCRFD decoding, NMS,
ArcFaceONNX and Attribute pre-processing run unchanged) and realistic compute; the JSON says
"weights": "stand-in (...)":

* det_10g.onnx: the marker detector of eval/bench/standin_faces.py (a coloured 8 x 8 cell of the detector's
  input "is" a face at a known place) plus a convolutional trunk of SCRFD-10G's size (ResNet basic
  blocks, PAFPN neck, three stacked 3x3 head convs per level, score / box / landmark heads at
  strides 8, 16 and 32, 2 anchors; 10.3 G multiply-accumulates at 640 x 640 (the convention of
  SCRFD's "10G"; 20.6 GFLOPs counting multiply and add apart) and 4.0 M parameters, as det_10g.onnx).
  The trunk's heads are live: at every anchor the output is the trunk's (score = NOISE_CEILING *
  sigmoid(logit), its box and landmarks) where that score beats the marker's, else the marker's
  (an ONNX Where, not "+ 0 * trunk"). The trunk's scores never reach the detection threshold
  (NOISE_CEILING < insightface's det_thresh here), so the decoded detections are exactly the marker
  model's, while every trunk convolution feeds the outputs through a data-dependent Where that no
  graph optimiser can fold. The JSON checks this: the raw outputs differ from the marker-only
  model's, the decoded detections are identical to it, the detector is timed with and without the
  trunk, and the convolutions left in ONNX Runtime's optimised graph are counted.
* w600k_r50.onnx: an IResNet-50 (insightface's arcface_torch layout, 6.3 G multiply-accumulates at
  112 x 112, 43.6 M parameters, 512-d output) with random weights, exported with torch.onnx.export.
  Per photo it runs on 2 crops (the aligned face and its mirror), as FaceAnalyzer does.
* genderage.onnx: eval/bench/standin_faces.py's constant genderage model (the real one is tiny).

The photos are 1280 x 960 JPEGs (grey textured background, one marker each, faces of varied place
and size); every photo must be used and its box must be where the marker puts it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eval.bench.common import environment, finish
from eval.bench.standin_faces import (
    FACE_H,
    FACE_W,
    NOISE_CEILING,
    STRIDES,
    IResNet,
    ScrfdTrunk,
    StandInScrfd,
    expected_detection,
    export_onnx,
    paint_marker,
    write_genderage,
    write_scrfd,
)

WEIGHTS = "stand-in (random ONNX models of SCRFD-10G / IResNet-50 compute)"
TARGET_S = 2.0  # per identity of 10 photos, models loaded
DET_SIZE = 640
PHOTO_W, PHOTO_H = 1280, 960
PHOTO_SCALE = PHOTO_W // DET_SIZE  # original pixels per detector-input pixel


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one forward of `x`."""
    total = [0]

    def conv_hook(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


# ------------------------------------------------------------------------------------ the pack
def _describe(module: nn.Module, dummy: torch.Tensor, path: Path) -> dict:
    macs = count_macs(module, dummy)
    return {"file": path.name, "gmacs": round(macs / 1e9, 3), "gflops": round(2 * macs / 1e9, 3),
            "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 3),
            "file_mb": round(path.stat().st_size / 1e6, 2), "input": list(dummy.shape)}


def build_pack(folder: Path, tiny: bool, seed: int = 0) -> tuple[Path, Path, dict]:
    """(pack folder, marker-only detector file, model descriptions)."""
    torch.manual_seed(seed)
    pack = folder / ("stand_in_tiny" if tiny else "stand_in_buffalo_l")
    pack.mkdir(parents=True)
    trunk = (ScrfdTrunk(stem=8, planes=(8, 8, 8, 16), blocks=(1, 1, 1, 1), neck=8, head=8, stacked=1)
             if tiny else ScrfdTrunk())
    det = StandInScrfd(trunk).eval()
    det_in = torch.randn(1, 3, DET_SIZE, DET_SIZE)
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    det_path = export_onnx(det, det_in, pack / "det_10g.onnx", "input.1", names,
                       {"input.1": {2: "height", 3: "width"}, **{n: {0: f"n_{n}"} for n in names}})
    rec = (IResNet(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64)) if tiny else IResNet()).eval()
    rec_in = torch.randn(2, 3, 112, 112)
    rec_path = export_onnx(rec, rec_in, pack / "w600k_r50.onnx", "input.1", ["embedding"],
                       {"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    ga_path = write_genderage(pack / "genderage.onnx")
    baseline = write_scrfd(folder / "baseline" / "det_marker_only.onnx")
    models = {"detector": _describe(det, det_in, det_path),
              "detector_trunk_only": {"gmacs": round(count_macs(trunk, det_in) / 1e9, 3)},
              "recogniser": _describe(rec, rec_in[:1], rec_path),
              "genderage": {"file": ga_path.name, "note": "eval/bench/standin_faces.py constant model (negligible)"}}
    return pack, baseline, models


# ---------------------------------------------------------------------------------- the photos
def make_photos(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """n 1280 x 960 JPEGs, each with one marker (a face at a known place and size)."""
    import cv2
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, cols = PHOTO_H // PHOTO_SCALE // 8, PHOTO_W // PHOTO_SCALE // 8  # detector cells
    specs = []
    for i in range(n):
        blue = int(rng.integers(0, 192))
        f = 1.0 + blue / 255.0
        mr, mc = math.ceil(f * FACE_H / 2 / 8) + 1, math.ceil(f * FACE_W / 2 / 8) + 1  # keep it inside
        row, col = int(rng.integers(mr, rows - mr)), int(rng.integers(mc, cols - mc))
        coarse = rng.uniform(40, 215, size=(12, 16)).astype(np.float32)
        grey = cv2.resize(coarse, (PHOTO_W, PHOTO_H), interpolation=cv2.INTER_CUBIC)
        grey = np.clip(grey + rng.normal(0, 6, size=grey.shape), 0, 255).astype(np.uint8)
        img = np.repeat(grey[:, :, None], 3, axis=2)  # R = G: scores 0 away from the marker
        paint_marker(img, row, col, (255, 0, blue), scale=PHOTO_SCALE)
        name = f"photo_{i:02d}.jpg"
        Image.fromarray(img).save(folder / name, quality=92, subsampling=0)
        specs.append({"file": name, "row": row, "col": col, "blue": blue})
    return specs


# ------------------------------------------------------------------------------------- timings
def stage_breakdown(analyzer, folder: Path) -> dict:
    """One instrumented pass doing what analyze_folder does, seconds per stage (sum over photos)."""
    from encoder.align import align_face
    from encoder.photos import list_photos, load_rgb

    t = dict(decode=0.0, detect=0.0, align=0.0, embed=0.0, genderage=0.0)
    for path in list_photos(folder):
        t0 = time.perf_counter()
        img = load_rgb(path)
        t1 = time.perf_counter()
        dets, _ = analyzer._accepted(img)
        pick = max(dets, key=lambda d: d.area)
        t2 = time.perf_counter()
        aligned = align_face(img, pick.kps, analyzer.crop_size)
        flipped = np.ascontiguousarray(aligned[:, ::-1])
        t3 = time.perf_counter()
        analyzer._embed([aligned, flipped])
        t4 = time.perf_counter()
        if analyzer.attribute is not None:
            analyzer._attributes(np.ascontiguousarray(img[:, :, ::-1]), pick.box)
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("align", t2, t3), ("embed", t3, t4),
                        ("genderage", t4, t5)):
            t[k] += b - a
    return {k: round(v, 4) for k, v in t.items()}


def _det_session(det):
    """The session insightface's SCRFD runs at DET_SIZE (its fixed-shape one, where it has them)."""
    getter = getattr(det, "_session_for_input_size", None)
    return getter((DET_SIZE, DET_SIZE)) if callable(getter) else det.session


def _blob(det, bgr: np.ndarray) -> np.ndarray:
    """The detector's input for one photo (SCRFD's letterbox + normalisation)."""
    import cv2

    h, w = bgr.shape[:2]
    scale = DET_SIZE / max(h, w)
    canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.uint8)
    resized = cv2.resize(bgr, (int(w * scale), int(h * scale)))
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    return cv2.dnn.blobFromImage(canvas, 1.0 / det.input_std, (DET_SIZE, DET_SIZE),
                                 (det.input_mean,) * 3, swapRB=True).astype(np.float32)


def time_detector(det, images_bgr: list[np.ndarray], repeats: int) -> dict:
    """Best-of-repeats ms per photo: detect() (letterbox + network + decoding + NMS) and the network alone."""
    size = (DET_SIZE, DET_SIZE)
    det.detect(images_bgr[0], input_size=size)  # creates insightface's fixed-shape session
    session = _det_session(det)
    blobs = [_blob(det, im) for im in images_bgr]
    session.run(det.output_names, {det.input_name: blobs[0]})
    best_detect = best_net = math.inf
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        for im in images_bgr:
            det.detect(im, input_size=size)
        t1 = time.perf_counter()
        for b in blobs:
            session.run(det.output_names, {det.input_name: b})
        t2 = time.perf_counter()
        best_detect = min(best_detect, (t1 - t0) / len(images_bgr))
        best_net = min(best_net, (t2 - t1) / len(blobs))
    return {"detect_ms": round(1e3 * best_detect, 2), "network_ms": round(1e3 * best_net, 2)}


def ort_conv_count(model_path: Path) -> dict:
    """Convolutions in the exported graph and in ONNX Runtime's optimised graph (CPU, default level
    ORT_ENABLE_ALL, input fixed at 640 x 640 as in insightface's fixed-shape session): a trunk folded
    or pruned away would vanish here."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d in dims[2:4]:
        d.ClearField("dim_param")
        d.dim_value = DET_SIZE
    exported = sum("Conv" in n.op_type for n in model.graph.node)
    with tempfile.TemporaryDirectory(prefix="ort_opt_") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # no "hardware specific optimised model" warning
        opts.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        optimised = onnx.load(opts.optimized_model_filepath)
    return {"exported": exported, "after_ort_optimisation": sum("Conv" in n.op_type for n in optimised.graph.node),
            "ort_level": "ORT_ENABLE_ALL, CPUExecutionProvider"}


def verify_trunk(det_trunk, det_plain, images_bgr: list[np.ndarray]) -> dict:
    """The trunk shows in the raw outputs, yet the decoded detections are the marker model's exactly."""
    size = (DET_SIZE, DET_SIZE)
    raw_diff, identical = 0.0, True
    for im in images_bgr:
        b = _blob(det_trunk, im)
        outs_t = _det_session(det_trunk).run(det_trunk.output_names, {det_trunk.input_name: b})
        outs_p = _det_session(det_plain).run(det_plain.output_names, {det_plain.input_name: b})
        raw_diff = max(raw_diff, max(float(np.abs(a - c).max()) for a, c in zip(outs_t, outs_p)))
        (d_t, k_t), (d_p, k_p) = det_trunk.detect(im, input_size=size), det_plain.detect(im, input_size=size)
        identical &= bool(np.array_equal(d_t, d_p) and np.array_equal(k_t, k_p)) and d_t.shape[0] > 0
    return {"raw_outputs_max_abs_diff_vs_marker_only": raw_diff,
            "trunk_changes_raw_outputs": raw_diff > 0,
            "decoded_detections_identical_to_marker_only": identical}


def _active_providers(model) -> list[str]:
    session = getattr(model, "session", None)
    return list(session.get_providers()) if session is not None else []


# ------------------------------------------------------------------------------------------ run
def run(n_photos: int, repeats: int, tiny: bool) -> dict:
    import onnxruntime as ort

    from encoder.face_analysis import FaceAnalyzer, FacePolicy, default_providers
    from encoder.photos import list_photos, load_rgb
    from personalize.extract import extract_identity

    result = {"workload": "train_identity", **environment(WEIGHTS), "tiny": tiny,
              "onnxruntime": ort.__version__, "providers_available": ort.get_available_providers(),
              "cpu_count": os.cpu_count(),
              "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "photos": n_photos, "photo_size": [PHOTO_W, PHOTO_H], "photo_format": "JPEG q92 4:4:4",
              "repeats": repeats, "target_s_per_identity": TARGET_S * n_photos / 10,
              "target": f"{TARGET_S:g} s per identity of 10 photos (scaled to the photo count), models loaded"}
    with tempfile.TemporaryDirectory(prefix="bench_identity_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pack, baseline, models = build_pack(tmp / "models", tiny)
        result["s_build_pack"] = round(time.perf_counter() - t0, 2)
        result["models"] = models
        photo_dir = tmp / "photos"
        specs = make_photos(photo_dir, n_photos)

        providers = default_providers()
        result["providers_requested"] = providers
        t0 = time.perf_counter()
        analyzer = FaceAnalyzer.from_pack(pack, policy=FacePolicy())
        result["s_model_load"] = round(time.perf_counter() - t0, 3)
        result["providers"] = {"detector": _active_providers(analyzer.detector),
                               "recogniser": _active_providers(analyzer.recogniser),
                               "genderage": _active_providers(analyzer.attribute)}
        result["ort_intra_op_threads"] = "onnxruntime default (0: one per physical core)"
        if not analyzer.detector.det_thresh > NOISE_CEILING:
            raise RuntimeError(f"detector threshold {analyzer.detector.det_thresh} <= the trunk's score ceiling "
                               f"{NOISE_CEILING}: the trunk would add detections")

        out_root = tmp / "records"
        t0 = time.perf_counter()
        record = extract_identity(photo_dir, analyzer, progress=False)
        record.save(out_root / "warmup")
        result["s_first_identity"] = round(time.perf_counter() - t0, 3)  # incl. lazy session set-up
        runs = []
        for r in range(repeats):
            t0 = time.perf_counter()
            record = extract_identity(photo_dir, analyzer, progress=False)
            t1 = time.perf_counter()
            record.save(out_root / f"run{r}")
            t2 = time.perf_counter()
            runs.append((t2 - t0, t1 - t0, t2 - t1))
        totals = [a for a, _, _ in runs]
        best = min(range(len(runs)), key=lambda i: totals[i]) if runs else None
        result["s_per_identity"] = {"best": round(totals[best], 4) if runs else None,
                                    "all": [round(v, 4) for v in totals],
                                    "mean": round(sum(totals) / len(totals), 4) if runs else None}
        result["s_per_photo_best"] = round(totals[best] / n_photos, 4) if runs else None
        if runs:
            result["s_extract_best_run"] = round(runs[best][1], 4)
            result["s_save_best_run"] = round(runs[best][2], 4)
        result["meets_target"] = bool(runs) and totals[best] < result["target_s_per_identity"]

        # every photo used, each face where its marker puts it
        by_name = {s["file"]: s for s in specs}
        errors = []
        for p in record.photos:
            s = by_name[Path(p.file).name]
            box, _ = expected_detection(s["row"], s["col"], s["blue"], scale=PHOTO_SCALE)
            errors.append(float(np.abs(np.asarray(p.box) - box).max()))
        result["photos_used"] = len(record.photos)
        result["photos_skipped"] = [s["reason"] for s in record.skipped]
        result["max_box_error_px"] = round(max(errors), 3) if errors else None
        result["boxes_as_expected"] = bool(errors) and max(errors) < 3.0 and len(errors) == n_photos

        result["stages_s_per_identity"] = stage_breakdown(analyzer, photo_dir)

        from insightface.model_zoo import model_zoo

        plain = model_zoo.get_model(str(baseline), providers=list(providers))
        plain.det_thresh = analyzer.detector.det_thresh
        images = [np.ascontiguousarray(load_rgb(p)[:, :, ::-1]) for p in list_photos(photo_dir)]
        result["detector_ms_per_photo"] = {"with_trunk": time_detector(analyzer.detector, images, repeats),
                                           "without_trunk": time_detector(plain, images, repeats)}
        result["trunk_check"] = {**verify_trunk(analyzer.detector, plain, images),
                                 "detector_threshold": float(analyzer.detector.det_thresh),
                                 "trunk_score_ceiling": NOISE_CEILING,
                                 "conv_nodes_with_trunk": ort_conv_count(pack / "det_10g.onnx"),
                                 "conv_nodes_marker_only": ort_conv_count(baseline)}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=10, help="photos per identity (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (default 3)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of the script, not a benchmark")
    args = p.parse_args(argv)
    if args.photos < 1 or args.repeats < 0:
        p.error("--photos must be >= 1 and --repeats >= 0")
    res = run(args.photos, args.repeats, args.tiny)
    print(json.dumps(res, indent=1))
    if args.out:
        finish(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
