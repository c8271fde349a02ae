"""eval.cluster_world on the committed world face pack: precision/recall of data_prep's clustering."""

import json
from pathlib import Path

import pytest

from eval.cluster_world import main

PACK = Path(__file__).resolve().parent.parent / "checkpoints" / "world" / "faces"


@pytest.mark.skipif(not (PACK / "recogniser.onnx").is_file(), reason="the world's face pack is not checked out")
def test_cluster_world_reports_precision_and_recall(tmp_path):
    out = tmp_path / "c.json"
    assert main(["--seed", "5", "--identities", "12", "--renders", "3", "--pack", str(PACK),
                 "--thresholds", "0.0,0.9", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["faces_found"] + data["faces_missed"] == 36 and data["faces_found"] >= 30
    loose, strict = data["results"]
    assert loose["clusters"] == 1 and loose["recall"] == 1.0  # threshold 0: everyone joins one cluster
    assert strict["precision"] > loose["precision"] and strict["clusters"] > loose["clusters"]
