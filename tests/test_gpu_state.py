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
