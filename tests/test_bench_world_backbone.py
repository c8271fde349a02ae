"""The world backbone's throughput benchmark, at tiny size on the CPU (the real figures come from the GPU)."""

import json

from eval.bench import world_backbone


def test_world_backbone_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    assert world_backbone.main(["--tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    parts = res["parts"]
    for name in ("render_same_device", "condition", "step_eager", "stage"):
        assert parts[name]["samples_per_s"] > 0, name
    assert "step_compiled" not in parts  # compiled only on CUDA
    assert parts["stage_render_workers"]["samples_per_s"] > 0 and parts["stage_render_workers"]["render_workers"] == 1
    assert parts["stage_render_workers_reuse2"]["batch_reuse"] == 2
    assert parts["render_cpu"][0]["processes"] == 1 and parts["render_cpu"][0]["samples_per_s"] > 0
    assert res["batch"] == 4 and res["uvit"]["embed_dim"] == 32 and res["parameters"] > 0
    assert res["weights"] == "random (tiny smoke test)"
