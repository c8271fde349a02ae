"""The identity stage's curves come from the run's log.json (the whole run, also across resumed calls),
with the diagnostic's fields under identity/."""

import json

from pretrain.world.identity import plot_curves, read_scalars


def test_curves_from_log_json(tmp_path):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)  # TensorBoard's folder is not read beside a log.json
    records = [{"kind": "train", "step": s, "loss/loss": s / 1e3, "train/lr": 1e-4, "data/corrupt_samples": 0}
               for s in (100, 200)]
    records.append({"kind": "identity", "step": 200, "id_gain": 0.004, "id_gain_se": 0.001, "samples": 256})
    (run / "log.json").write_text(json.dumps({"records": records}))
    scalars = read_scalars(run)
    assert scalars["loss/loss"] == [(100, 0.1), (200, 0.2)]
    assert scalars["identity/id_gain"] == [(200, 0.004)] and scalars["identity/samples"] == [(200, 256.0)]
    assert "kind" not in scalars and "step" not in scalars
    png = plot_curves(run, tmp_path / "curves.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_no_curves_without_logs(tmp_path):
    assert read_scalars(tmp_path) == {} and plot_curves(tmp_path, tmp_path / "c.png") is None
