"""scripts/gpu_state.sh: the GPU call scripts' state travels as <= 15 MiB pieces and comes back whole."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_pack_then_restore_round_trips_and_leaves_out_what_is_excluded(tmp_path):
    src, out, back = tmp_path / "src", tmp_path / "out", tmp_path / "back"
    (src / "runs" / "a").mkdir(parents=True)
    (src / "runs" / "identity" / "shards").mkdir(parents=True)
    big = os.urandom(20 * 2**20)  # incompressible: more than one 15 MiB piece
    (src / "runs" / "a" / "weights.bin").write_bytes(big)
    (src / "runs" / "identity" / "shards" / "s.tar").write_text("regenerated, never packed")
    out.mkdir()
    script = (f"source {REPO / 'scripts' / 'gpu_state.sh'}; "
              f"pack_state st {src} {out} --exclude=runs/identity/shards runs && "
              f"STATE={out} restore_state st {back} && restore_state none {back}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["st.tgz.00", "st.tgz.01"]
    assert all(p.stat().st_size <= 15 * 2**20 for p in out.iterdir())
    assert (back / "runs" / "a" / "weights.bin").read_bytes() == big
    assert not (back / "runs" / "identity" / "shards").exists()


def test_overlay_world_replaces_each_part_whole_in_a_copy_of_the_committed_world(tmp_path):
    """A candidate's parts (its models/, renderer.json, a retrained faces/ ...) replace their namesakes in a copy
    of checkpoints/world; what they do not name is the committed world's, and the copy is marked .candidate."""
    world = tmp_path / "checkpoints" / "world"
    for rel, text in {"models/uvit_v1.safetensors": "old", "models/pixel_space.safetensors": "old",
                      "faces/recogniser.onnx": "old", "world_clip/config.json": "kept",
                      "renderer.json": "faceworld-2"}.items():
        (world / rel).parent.mkdir(parents=True, exist_ok=True)
        (world / rel).write_text(text)
    next_ = tmp_path / "next"
    for rel, text in {"models/uvit_v1.safetensors": "new", "renderer.json": "faceworld-3"}.items():
        (next_ / rel).parent.mkdir(parents=True, exist_ok=True)
        (next_ / rel).write_text(text)
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "detector.onnx").write_text("new")
    dest = tmp_path / "w"
    (dest / "stale").mkdir(parents=True)
    script = f"source {REPO / 'scripts' / 'gpu_state.sh'}; overlay_world {dest} {next_}/* {tmp_path / 'faces'}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = {str(p.relative_to(dest)): p.read_text() for p in dest.rglob("*") if p.is_file()}
    assert files == {"models/uvit_v1.safetensors": "new", "renderer.json": "faceworld-3",
                     "faces/detector.onnx": "new", "world_clip/config.json": "kept", ".candidate": ""}
