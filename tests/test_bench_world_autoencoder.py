"""The world autoencoder's step benchmark, at tiny size on the CPU (the real figures come from the GPU)."""

import json

from eval.bench import world_autoencoder


def test_world_autoencoder_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    assert world_autoencoder.main(["--tiny", "--downsample", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    parts = res["parts"]
    for name in ("step_eager", "step_channels_last", "stage_render_workers"):
        assert parts[name]["samples_per_s"] > 0, name
    assert "step_compiled" not in parts  # compiled only on CUDA
    assert parts["stage_render_workers"]["render_workers"] == 1 and parts["stage_render_workers"]["batch_reuse"] == 4
    assert res["train"]["ch_mult"] == [1, 2, 2] and res["batch"] == 4 and res["parameters"] > 0
    assert res["weights"] == "random (a new run's initialisation) (tiny smoke test)"
