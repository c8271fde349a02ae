"""Smoke test of eval/bench/identity.py: tiny stand-in models, 3 photos, one timed repetition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_identity_tiny(tmp_path):
    out = tmp_path / "tmp.json"
    proc = subprocess.run([sys.executable, "-m", "eval.bench.identity", "--tiny", "--photos", "3", "--repeats", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())

    assert res["workload"] == "train_identity"
    assert res["weights"].startswith("stand-in")
    assert res["tiny"] is True
    for key in ("device", "torch", "git_commit", "command", "onnxruntime", "providers_available", "providers",
                "models", "stages_s_per_identity", "detector_ms_per_photo", "trunk_check"):
        assert key in res, key
    assert "CPUExecutionProvider" in res["providers_available"]
    assert res["providers"]["detector"] and res["providers"]["recogniser"]

    # every photo used, each face where its marker put it
    assert res["photos"] == 3 and res["photos_used"] == 3 and res["photos_skipped"] == []
    assert res["boxes_as_expected"] is True

    # timings
    assert res["repeats"] == 1 and len(res["s_per_identity"]["all"]) == 1
    assert res["s_per_identity"]["best"] > 0 and res["s_model_load"] > 0
    assert set(res["stages_s_per_identity"]) == {"decode", "detect", "align", "embed", "genderage"}
    for variant in ("with_trunk", "without_trunk"):
        assert res["detector_ms_per_photo"][variant]["network_ms"] > 0

    # the trunk reaches the outputs, the detections stay the marker model's
    check = res["trunk_check"]
    assert check["trunk_changes_raw_outputs"] is True
    assert check["decoded_detections_identical_to_marker_only"] is True
    assert check["trunk_score_ceiling"] < check["detector_threshold"]
    convs = check["conv_nodes_with_trunk"]
    assert convs["after_ort_optimisation"] == convs["exported"] > check["conv_nodes_marker_only"]["exported"]
