"""The face model travels with the embeddings: data_prep -> pretrain -> train.py -> sample.py.

Two stand-in insightface packs in the tiny weights folder (tests/tiny_stack.py), with different
recognisers: buffalo_l/ (w600k_r50.onnx) and antelopev2/ (glintr100.onnx, another projection), the
latter being the one the old silent fallback picked first. Shards are prepared with buffalo_l, the
identity module is pretrained on them; train.py must then pick buffalo_l by itself, refuse
antelopev2 unless told otherwise, and sample.py must refuse a record of the other pack.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main as data_prep_main
from encoder.face_analysis import CROP_RULE, FaceAnalyzer, face_model_block, face_model_mismatch
from eval.bench.standin_faces import make_pack, paint_marker, write_arcface
from models.errors import run_cli
from models.paths import file_sha256
from personalize.record import IdentityRecord
from pretrain.config import PretrainConfig
from pretrain.data import DataError
from pretrain.train import train
from tests.tiny_stack import make_tiny_weights_dir

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pretrain" / "configs" / "tiny.json"
PREP = ["--resolution", "16", "--min-image-side", "64", "--min-face-size", "32", "--no-progress"]


def _cli(script: str):
    """train.py / sample.py as a module, to run refusals in process (they stop before any heavy work)."""
    spec = importlib.util.spec_from_file_location(f"{script}_cli", ROOT / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photo(path: Path, grey: int, row: int, col: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(paint_marker(np.full((640, 640, 3), grey, np.uint8), row, col)).save(path)
    path.with_suffix(".txt").write_text("a photo of a person")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("face_model")
    weights = make_tiny_weights_dir(tmp / "weights")
    make_pack(weights / "buffalo_l")  # recogniser w600k_r50.onnx
    make_pack(weights / "antelopev2", recogniser=None)
    write_arcface(weights / "antelopev2" / "glintr100.onnx", seed=1)  # another embedding space
    corpus = tmp / "corpus"  # three people (background shades), three photos each
    for person, grey in enumerate((90, 128, 170)):
        for k, (row, col) in enumerate([(20, 20), (30, 40), (45, 25)]):
            _photo(corpus / f"person{person}" / f"{k}.png", grey, row, col)
    shards = tmp / "shards_buffalo"
    assert data_prep_main(["--source", "folder", "--input", str(corpus), "--identity-from-folder", "--out", str(shards),
                           "--weights", str(weights), "--face-pack", str(weights / "buffalo_l"), "--shard-size", "5",
                           *PREP]) == 0
    c = dataclasses.replace(PretrainConfig.from_file(TINY), shards=str(shards), output_dir=str(tmp / "run"),
                            weights=str(weights), random_backbone=False, uvit=None, max_steps=2, checkpoint_every=2)
    encoder = train(c).export_dir
    photos = tmp / "train_data" / "boy1"
    for k, (row, col) in enumerate([(20, 20), (30, 40), (45, 25)]):
        _photo(photos / f"photo{k}.jpg", 128, row, col)
    prompts = tmp / "boy1.json"
    prompts.write_text(json.dumps(["a boy"]))
    return dict(tmp=tmp, weights=weights, corpus=corpus, shards=shards, encoder=encoder, photos=photos,
                prompts=prompts, config=c)


def _run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_block_of_a_pack_and_what_counts_as_a_mismatch(stack, tmp_path):
    pack = stack["weights"] / "buffalo_l"
    block = face_model_block(FaceAnalyzer.from_pack(pack, providers=["CPUExecutionProvider"]))
    assert block["pack"] == "buffalo_l" and block["recognition_file"] == "w600k_r50.onnx"
    assert block["recognition_sha256"] == file_sha256(pack / "w600k_r50.onnx") and block["embedding_size"] == 512
    assert block["alignment"]["size"] == 112 and block["alignment"]["template"][0] == [38.2946, 51.6963]
    assert block["crop"] == CROP_RULE and "pack_json" not in block
    # a renamed copy with a pack.json: the same face model, its name and policy from pack.json
    shutil.copytree(pack, tmp_path / "copy")
    (tmp_path / "copy" / "pack.json").write_text(json.dumps({"name": "buffalo_l_v1", "min_face_size": 40}))
    copy = face_model_block(FaceAnalyzer.from_pack(tmp_path / "copy", providers=["CPUExecutionProvider"]))
    assert copy["pack"] == "buffalo_l_v1" and copy["pack_json"] == {"min_face_size": 40}
    assert face_model_mismatch(block, copy) == []
    other = face_model_block(FaceAnalyzer.from_pack(stack["weights"] / "antelopev2",
                                                    providers=["CPUExecutionProvider"]))
    assert face_model_mismatch(block, other) == ["another recognition model"]
    assert face_model_mismatch(block, dict(block, embedding_size=256, crop="another")) == \
        ["another embedding size", "another crop rule"]
    assert face_model_mismatch(block, {"recognition_sha256": None}) == []  # unknown: not compared


def test_manifest_to_module_and_mixed_shards(stack):
    manifest = json.loads((stack["shards"] / "manifest.json").read_text())
    block = manifest["face_model"]
    assert block["pack"] == "buffalo_l" and block["recognition_file"] == "w600k_r50.onnx"
    assert block["recognition_sha256"] == manifest["settings"]["models"]["face_recogniser"]  # the old fingerprint
    meta = json.loads((stack["encoder"] / "config.json").read_text())
    assert meta["face_model"] == block
    assert meta["identity_diagnostic"]["step"] == 2  # the diagnostic ran on the data_prep shards
    # shards of another pack (data_prep's default: the first of antelopev2, buffalo_l), mixed in: refused
    other = stack["tmp"] / "shards_antelope"
    assert data_prep_main(["--source", "folder", "--input", str(stack["corpus"]), "--identity-from-folder", "--out",
                           str(other), "--weights", str(stack["weights"]), "--shard-size", "5", *PREP]) == 0
    assert json.loads((other / "manifest.json").read_text())["face_model"]["recognition_file"] == "glintr100.onnx"
    mixed = dataclasses.replace(stack["config"], shards=f"{stack['shards']},{other}",
                                output_dir=str(stack["tmp"] / "run_mixed"))
    with pytest.raises(DataError, match="the shards mix face models") as e:
        train(mixed)
    assert f"{other} holds embeddings of antelopev2 (glintr100.onnx" in str(e.value)
    assert f"{stack['shards']} of buffalo_l (w600k_r50.onnx" in str(e.value)
    assert "(another recognition model)" in str(e.value)


def test_train_picks_the_module_pack_and_sample_uses_the_record(stack):
    s = stack
    record_dir = s["tmp"] / "identities" / "boy1"
    out = _run("train.py", "-d", s["photos"], "-o", record_dir, "--encoder", s["encoder"], "--weights", s["weights"],
               "--device", "cpu", "--quiet")
    pack = s["weights"] / "buffalo_l"  # not antelopev2, which the old fallback took
    assert f"face pack: {pack} (the pack the identity module {s['encoder']} was pretrained with)" in out.stdout
    record = IdentityRecord.load(record_dir)
    module_block = json.loads((s["encoder"] / "config.json").read_text())["face_model"]
    assert record.face_model == module_block
    assert json.loads((record_dir / "identity.json").read_text())["face_model"] == module_block
    out = _run("sample.py", "--restore_path", record_dir, "--prompt_path", s["prompts"], "--output_path",
               s["tmp"] / "out", "--weights", s["weights"], "--encoder", s["encoder"], "--steps", "2", "--n", "1",
               "--device", "cpu", "--quiet")
    assert out.stdout.strip().endswith("finetuned parameters: 0") and "warning" not in out.stderr
    assert (s["tmp"] / "out" / "0-000.jpg").is_file()


def test_mismatches_are_refused_unless_allowed(stack, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")  # sample.py in process: leave the allocator alone
    s = stack
    train_cli, sample_cli = _cli("train"), _cli("sample")
    base = ["-d", str(s["photos"]), "--encoder", str(s["encoder"]), "--weights", str(s["weights"]), "--device", "cpu",
            "--quiet", "--face-pack", str(s["weights"] / "antelopev2")]
    assert run_cli(train_cli.main, [*base, "-o", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "was pretrained on embeddings of buffalo_l (w600k_r50.onnx" in err
    assert "is antelopev2 (glintr100.onnx" in err and "install the buffalo_l pack" in err
    assert "--allow-face-model-mismatch" in err and not (tmp_path / "refused").exists()
    other = tmp_path / "other"
    assert run_cli(train_cli.main, [*base, "-o", str(other), "--allow-face-model-mismatch"]) == 0
    assert "warning: " in capsys.readouterr().err
    assert IdentityRecord.load(other).face_model["recognition_file"] == "glintr100.onnx"

    sample = ["--prompt_path", str(s["prompts"]), "--weights", str(s["weights"]), "--encoder", str(s["encoder"]),
              "--steps", "2", "--n", "1", "--device", "cpu", "--quiet"]
    assert run_cli(sample_cli.main, ["--restore_path", str(other), "--output_path", str(tmp_path / "o1"), *sample]) == 2
    err = capsys.readouterr().err
    assert f"the identity record {other} holds embeddings of antelopev2 (glintr100.onnx" in err
    assert "pretrained on embeddings of buffalo_l (w600k_r50.onnx" in err
    assert "rerun train.py with the buffalo_l pack" in err
    assert not list((tmp_path / "o1").glob("*.jpg"))
    assert run_cli(sample_cli.main, ["--restore_path", str(other), "--output_path", str(tmp_path / "o2"), *sample,
                                     "--allow-face-model-mismatch"]) == 0
    assert "warning: " in capsys.readouterr().err and (tmp_path / "o2" / "0-000.jpg").is_file()


def test_modules_and_records_from_before_still_work(stack, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")
    s = stack
    old = tmp_path / "old_encoder"
    shutil.copytree(s["encoder"], old)
    meta = json.loads((old / "config.json").read_text())
    del meta["face_model"], meta["identity_diagnostic"]
    (old / "config.json").write_text(json.dumps(meta))
    record_dir = tmp_path / "rec"
    assert run_cli(_cli("train").main, ["-d", str(s["photos"]), "-o", str(record_dir), "--encoder", str(old),
                                        "--weights", str(s["weights"]), "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"(the first of antelopev2, buffalo_l found (the identity module {old} records no face model))" \
        in captured.out
    assert f"warning: the identity module {old} records no face model" in captured.err
    record = IdentityRecord.load(record_dir)
    record.face_model = None  # as written before records carried one
    record.save(record_dir)
    assert run_cli(_cli("sample").main, ["--restore_path", str(record_dir), "--prompt_path", str(s["prompts"]),
                                         "--output_path", str(tmp_path / "o"), "--weights", str(s["weights"]),
                                         "--encoder", str(old), "--steps", "2", "--n", "1", "--device", "cpu",
                                         "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"warning: the identity record {record_dir} records no face model" in err
    assert f"warning: the identity module {old} records no face model" in err
