"""The competition workflow end to end on the CPU: train.py then sample.py, tiny models.

The UniDiffuser stack is tiny (tests/tiny_stack.py), the face pack is the ONNX stand-in of
eval/bench/standin_faces.py (insightface loads and decodes it), and the photos carry the stand-in
detector's marker. Both commands run as subprocesses exactly as users call them.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder.config import IdentityConfig
from encoder.identity import IdentityModule, checkpoint_hash
from eval.bench.standin_faces import make_pack, paint_marker
from models.uvit import UViTConfig
from personalize.record import IdentityRecord
from tests.tiny_stack import make_tiny_weights_dir, tiny_configs

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    weights = make_tiny_weights_dir(tmp / "weights")
    pack = make_pack(tmp / "pack")
    photos = tmp / "train_data" / "boy1"
    photos.mkdir(parents=True)
    for i, (row, col) in enumerate([(20, 20), (30, 40), (45, 25)]):
        img = np.full((640, 640, 3), 128, np.uint8)
        Image.fromarray(paint_marker(img, row, col)).save(photos / f"photo{i}.jpg" if i != 1 else photos / "p1.jpeg",
                                                          quality=98)
    (photos / "notes.jpg").write_text("not an image")
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(photos / "empty_room.png")
    uvit_cfg = UViTConfig.from_dict(tiny_configs()["uvit"])
    module = IdentityModule(IdentityConfig.for_uvit(uvit_cfg, num_tokens=4, hidden_dim=32))
    with torch.no_grad():
        module.gate.fill_(0.5)  # an opened gate, so the identity changes the images
    encoder = module.save(tmp / "faceid_encoder")
    prompts = tmp / "boy1.json"
    prompts.write_text(json.dumps(["a boy", "a boy on the beach"]))
    return dict(tmp=tmp, weights=weights, pack=pack, photos=photos, encoder=encoder, prompts=prompts)


def test_train_then_sample(setup):
    s = setup
    backbone_files = sorted((s["weights"] / "models").glob("*.pth"))
    before = {p.name: _sha(p) for p in backbone_files}
    record_dir = s["tmp"] / "identities" / "boy1"
    out = _run("train.py", "-d", str(s["photos"]), "-o", str(record_dir), "--face-pack", str(s["pack"]),
               "--encoder", str(s["encoder"]), "--device", "cpu", "--quiet")
    assert "3 photos used, 2 skipped" in out.stdout
    assert "notes.jpg" in out.stdout and "empty_room.png" in out.stdout  # the table names the skipped files
    rec = IdentityRecord.load(record_dir)
    assert len(rec.photos) == 3 and rec.embeddings.shape == (3, 512)
    assert rec.class_word == "boy" and rec.class_word_source == "folder name"
    assert rec.encoder["sha256"] == checkpoint_hash(s["encoder"])
    reasons = {Path(x["file"]).name: x["reason"] for x in rec.skipped}
    assert reasons["notes.jpg"] == "not an image file" and reasons["empty_room.png"] == "no face detected"

    out_dir = s["tmp"] / "outputs" / "boy1"
    sample_args = ["sample.py", "--restore_path", str(record_dir), "--prompt_path", str(s["prompts"]),
                   "--output_path", str(out_dir), "--weights", str(s["weights"]), "--encoder", str(s["encoder"]),
                   "--steps", "3", "--device", "cpu", "--quiet"]
    out = _run(*sample_args)
    assert out.stdout.strip().splitlines()[-1] == "finetuned parameters: 0"
    timing = next(line for line in out.stdout.splitlines() if line.startswith("time: "))
    stages = ("imports", "inputs", "backbone weights", "identity module", "sampling", "parameter check")
    assert all(f"{name} " in timing for name in stages) and "largest: " in timing, timing
    names = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    assert (out_dir / ".generation.json").is_file()  # what made the images, for resume
    assert names == ["0-000.jpg", "0-001.jpg", "0-002.jpg", "1-000.jpg", "1-001.jpg", "1-002.jpg"]
    size = tiny_configs()["uvit"]["img_size"] * 2  # the tiny autoencoder upsamples by 2
    assert all(Image.open(out_dir / n).size == (size, size) for n in names)
    first = {n: _sha(out_dir / n) for n in names}

    # resume: a rerun skips finished prompts; a regenerated prompt gives the same images
    (out_dir / "1-002.jpg").unlink()
    out = _run(*sample_args)
    assert "1 prompts generated, 1 already done" in out.stdout
    assert {n: _sha(out_dir / n) for n in names} == first

    # other settings: the existing images are not reused
    out = _run(*sample_args, "--cfg", "3")
    assert "2 prompts generated, 0 already done" in out.stdout
    assert _sha(out_dir / "0-000.jpg") != first["0-000.jpg"]

    # per-photo tokens (an ablation): other conditioning, so other images, and not taken for the mean's
    each_dir = s["tmp"] / "outputs" / "each"
    each = [a if a != str(out_dir) else str(each_dir) for a in sample_args]
    _run(*each, "--photo-tokens", "each")
    assert _sha(each_dir / "0-000.jpg") != first["0-000.jpg"]
    out = _run(*each)
    assert "2 prompts generated, 0 already done" in out.stdout

    # the identity matters: id-scale 0 gives other images for the same seed
    plain_dir = s["tmp"] / "outputs" / "plain"
    _run(*[a if a != str(out_dir) else str(plain_dir) for a in sample_args], "--id-scale", "0")
    assert _sha(plain_dir / "0-000.jpg") != first["0-000.jpg"]

    # a module's own sampling default (config.json `sampling`): used when --id-start is not given
    late = s["tmp"] / "faceid_encoder_late"
    late.mkdir()
    (late / "identity.safetensors").write_bytes((s["encoder"] / "identity.safetensors").read_bytes())
    meta = json.loads((s["encoder"] / "config.json").read_text())
    (late / "config.json").write_text(json.dumps({**meta, "sampling": {"id_start": 0.5}}))
    late_dir, flag_dir, every_dir = (s["tmp"] / "outputs" / name for name in ("late", "flag", "every"))

    def with_module(folder, module):
        return [{str(out_dir): str(folder), str(s["encoder"]): str(module)}.get(a, a) for a in sample_args]

    out = _run(*with_module(late_dir, late))
    assert "identity from noise level 0.5 down (the identity module's default" in out.stdout
    _run(*with_module(flag_dir, s["encoder"]), "--id-start", "0.5")
    assert _sha(late_dir / "0-000.jpg") == _sha(flag_dir / "0-000.jpg") != first["0-000.jpg"]
    out = _run(*with_module(every_dir, late), "--id-start", "1")  # the flag wins over the module's default
    assert "identity from noise level" not in out.stdout and _sha(every_dir / "0-000.jpg") == first["0-000.jpg"]

    after = {p.name: _sha(p) for p in backbone_files}
    assert after == before  # the backbone's weight files are untouched


def test_sample_errors(setup):
    s = setup
    record_dir = s["tmp"] / "rec_err"
    _run("train.py", "-d", str(s["photos"]), "-o", str(record_dir), "--face-pack", str(s["pack"]), "--device", "cpu",
         "--quiet")
    bad = s["tmp"] / "bad.json"
    bad.write_text('{"prompt": "a boy"}')
    base = ["sample.py", "--restore_path", str(record_dir), "--output_path", str(s["tmp"] / "o"),
            "--weights", str(s["weights"]), "--steps", "2", "--device", "cpu", "--quiet"]
    p = _run(*base, "--prompt_path", str(bad), "--encoder", str(s["encoder"]), check=False)
    assert p.returncode == 2 and "expected a list of strings" in p.stderr and "Traceback" not in p.stderr
    # no pretrained identity module: a clear message saying how to get one
    p = _run(*base, "--prompt_path", str(s["prompts"]), "--encoder", str(s["tmp"] / "nope"), check=False)
    assert p.returncode == 2 and "scripts/pretrain.sh" in p.stderr
    # ... unless an untrained one is asked for explicitly (zero gates: plain UniDiffuser)
    p = _run(*base, "--prompt_path", str(s["prompts"]), "--encoder", str(s["tmp"] / "nope"),
             "--allow-untrained-encoder", check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("finetuned parameters: 0")


def test_train_errors(setup, tmp_path):
    s = setup
    empty = tmp_path / "girl_empty"
    empty.mkdir()
    p = _run("train.py", "-d", str(empty), "-o", str(tmp_path / "rec"), "--face-pack", str(s["pack"]),
             "--device", "cpu", "--quiet", check=False)
    assert p.returncode == 2 and "no usable face photo" in p.stderr
    assert not (tmp_path / "rec").exists()  # nothing written
    p = _run("train.py", "-d", str(s["photos"]), "-o", str(tmp_path / "rec"), "--face-pack",
             str(tmp_path / "no_pack"), "--device", "cpu", check=False)
    assert p.returncode == 2 and "no_pack" in p.stderr and "Traceback" not in p.stderr


def test_refine_steps(setup, tmp_path):
    s = setup
    p = _run("train.py", "-d", str(s["photos"]), "-o", str(tmp_path / "rec"), "--face-pack", str(s["pack"]),
             "--encoder", str(s["encoder"]), "--weights", str(s["weights"]), "--refine-steps", "3",
             "--refine-batch", "2", "--device", "cpu", "--quiet")
    rec = IdentityRecord.load(tmp_path / "rec")
    assert rec.tokens is not None and rec.tokens.shape == (4, 64)
    assert len(rec.refine["losses"]) == 3 and all(np.isfinite(rec.refine["losses"]))
    # the refined tokens moved away from the projector's output
    module = IdentityModule.load(s["encoder"])
    with torch.no_grad():
        start = module.tokens_from_photos(rec.embeddings, rec.embeddings_flip)[0]
    assert (rec.tokens - start).abs().max() > 0
    assert "3 photos used" in p.stdout
    # refined tokens are the pooled photos': per-photo tokens are refused in one line, nothing written
    p = _run("sample.py", "--restore_path", str(tmp_path / "rec"), "--prompt_path", str(s["prompts"]),
             "--output_path", str(tmp_path / "o"), "--weights", str(s["weights"]), "--encoder", str(s["encoder"]),
             "--steps", "2", "--device", "cpu", "--quiet", "--photo-tokens", "each", check=False)
    assert p.returncode == 2 and "unrefined identity record" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "o").glob("*.jpg"))


def test_train_under_accelerate_launch(setup, tmp_path):
    """The competition launches train.py through accelerate with fp16 mixed precision."""
    s = setup
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--mixed_precision", "fp16", "--num_processes", "1",
                           "--num_machines", "1", "--dynamo_backend", "no", "train.py", "-d", str(s["photos"]),
                           "-o", str(tmp_path / "rec"), "--face-pack", str(s["pack"]), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "3 photos used, 2 skipped" in proc.stdout
    assert IdentityRecord.load(tmp_path / "rec").embeddings.shape == (3, 512)
