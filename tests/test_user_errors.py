"""What a new user runs into on the main-job path, and the answer each gets: a clear line (exit 2)
or correct behaviour. The batch scripts and the commands run as users call them, on the tiny stack
with the stand-in face pack (as tests/test_end_to_end.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder.config import IdentityConfig
from encoder.identity import IdentityModule
from eval.bench.standin_faces import make_pack, paint_marker
from models.errors import run_cli
from models.uvit import UViTConfig
from personalize.record import IdentityRecord
from tests.tiny_stack import make_tiny_weights_dir, tiny_configs

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")


def _cli(name: str):
    """The module of a top-level command (train.py, sample.py), loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _face_photo(path: Path, row: int = 20, col: int = 20) -> None:
    img = np.full((640, 640, 3), 128, np.uint8)
    Image.fromarray(paint_marker(img, row, col)).save(path)


def _one_error_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], (needle, stderr)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user_errors")
    weights = make_tiny_weights_dir(tmp / "weights")
    pack = make_pack(tmp / "pack")
    module = IdentityModule(IdentityConfig.for_uvit(UViTConfig.from_dict(tiny_configs()["uvit"]), num_tokens=4,
                                                    hidden_dim=32))
    encoder = module.save(tmp / "faceid_encoder")
    return dict(tmp=tmp, weights=weights, pack=pack, encoder=encoder)


# --------------------------------------------------------------------------------- the batch scripts
def test_train_sh_goes_on_after_a_failing_identity_and_lists_every_result(stack, tmp_path):
    data = tmp_path / "train_data"
    (data / "a_empty").mkdir(parents=True)  # first in order: it fails, the next one must still run
    boy = data / "boy1"
    boy.mkdir()
    _face_photo(boy / "photo0.jpg", 20, 20)
    _face_photo(boy / "photo1.gif", 30, 40)  # a GIF counts as a photo
    (boy / "gone.jpg").symlink_to(boy / "deleted.jpg")  # a broken link is listed, not dropped
    (boy / "notes.txt").write_text("taken in 2019")
    env = dict(os.environ, TRAIN_DATA=str(data), IDENTITIES=str(tmp_path / "ids"), PY=sys.executable)
    p = subprocess.run(["bash", "scripts/train.sh", "--face-pack", str(stack["pack"]), "--device", "cpu", "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    table = p.stdout[p.stdout.index("identity  result"):]
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert "FAILED" in rows["a_empty"] and "no usable face photo" in rows["a_empty"] and "(exit 2)" in rows["a_empty"]
    assert rows["boy1"].split()[1] == "ok" and "2 photos used, 2 skipped" in rows["boy1"]
    assert "2 run, 1 failed" in p.stdout and "personalised 1 of 2 identities" in p.stdout
    record = IdentityRecord.load(tmp_path / "ids" / "boy1")
    assert sorted(Path(x.file).name for x in record.photos) == ["photo0.jpg", "photo1.gif"]
    reasons = {Path(x["file"]).name: x["reason"] for x in record.skipped}
    assert reasons == {"gone.jpg": f"broken link (its target {boy / 'deleted.jpg'} does not exist)",
                       "notes.txt": "not an image file"}
    assert not (tmp_path / "ids" / "a_empty").exists()


def test_sample_sh_goes_on_after_a_missing_identity(stack, tmp_path):
    ids = tmp_path / "ids"
    _face_photo(tmp_path / "p.jpg")
    assert run_cli(_cli("train").main, ["-d", str(tmp_path), "-o", str(ids / "boy1"), "--face-pack",
                                        str(stack["pack"]), "--device", "cpu", "--quiet"]) == 0
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "a_girl.json").write_text('["a girl"]')  # no identity a_girl: fails, first in order
    (prompts / "boy1.json").write_text('["a boy"]')
    env = dict(os.environ, EVAL_PROMPTS=str(prompts), IDENTITIES=str(ids), OUTPUTS=str(tmp_path / "out"),
               PY=sys.executable)
    p = subprocess.run(["bash", "scripts/sample.sh", "--weights", str(stack["weights"]), "--encoder",
                        str(stack["encoder"]), "--steps", "2", "--n", "1", "--device", "cpu", "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stdout + p.stderr
    table = p.stdout[p.stdout.index("prompt file  result"):]
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert "FAILED" in rows["a_girl"] and "holds no identity record" in rows["a_girl"]
    assert rows["boy1"].split()[1] == "ok" and "1 prompts generated" in rows["boy1"]
    assert (tmp_path / "out" / "boy1" / "0-000.jpg").is_file()
    assert "2 run, 1 failed" in p.stdout and "total finetuned parameters: 0" in p.stdout


# ---------------------------------------------------------------------------------------- train.py
def test_train_output_is_checked_before_any_photo(stack, tmp_path, capsys):
    """-o at a file or where nothing can be written: one line naming it, before the face models load
    (the face pack given here does not exist, so getting that far would be another error)."""
    _face_photo(tmp_path / "p.jpg")
    train = _cli("train")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out, words in ((taken, "is a file, not a folder"), (taken / "sub", "is a file, not a folder"),
                       (Path("/proc/no_such_dir/rec"), "cannot write in /proc")):
        code = run_cli(train.main, ["-d", str(tmp_path), "-o", str(out), "--face-pack", str(tmp_path / "no_pack")])
        _one_error_line(capsys.readouterr().err, "-o", words)
        assert code == 2


@NO_GPU
def test_train_and_sample_refuse_a_device_that_is_not_here(stack, tmp_path, capsys):
    _face_photo(tmp_path / "p.jpg")
    train, sample = _cli("train"), _cli("sample")
    ids = tmp_path / "ids"
    for device, words in (("cuda", "sees no CUDA GPU"), ("garbage", "unknown device 'garbage'")):
        assert run_cli(train.main, ["-d", str(tmp_path), "-o", str(ids), "--face-pack", str(stack["pack"]),
                                    "--device", device, "--quiet"]) == 2
        err = capsys.readouterr().err
        _one_error_line(err, words)
        assert "hint: devices here: cpu" in err
    assert not ids.exists()  # train.py did not go on on the CPU
    assert run_cli(train.main, ["-d", str(tmp_path), "-o", str(ids), "--face-pack", str(stack["pack"]),
                                "--device", "cpu", "--quiet"]) == 0
    prompts = tmp_path / "p.json"
    prompts.write_text('["a boy"]')
    for device in ("cuda", "cuda:1", "garbage"):
        assert run_cli(sample.main, ["--restore_path", str(ids), "--prompt_path", str(prompts), "--output_path",
                                     str(tmp_path / "out"), "--weights", str(stack["weights"]), "--encoder",
                                     str(stack["encoder"]), "--device", device]) == 2
        err = capsys.readouterr().err
        _one_error_line(err, repr(device))
        assert "devices here: cpu" in err


# --------------------------------------------------------------------------------------- sample.py
@pytest.mark.parametrize("args,words", [
    (["--n", "0"], "argument --n: must be at least 1 (got 0)"),
    (["--n", "-1"], "argument --n: must be at least 1 (got -1)"),
    (["--n", "two"], "argument --n: 'two' is not an integer"),
    (["--steps", "0"], "argument --steps: must be at least 1"),
    (["--cfg", "nan"], "argument --cfg: 'nan' is not a finite number"),
    (["--cfg", "-3"], "argument --cfg: must be at least 0"),
    (["--id-scale", "inf"], "argument --id-scale: 'inf' is not a finite number"),
    (["--id-guidance", "1e9"], "argument --id-guidance: must be at most 100"),
])
def test_sample_refuses_bad_numbers_while_parsing(args, words, capsys):
    parser = _cli("sample").build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--restore_path", "r", "--prompt_path", "p.json", "--output_path", "o", *args])
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_train_refuses_bad_numbers_while_parsing(capsys):
    parser = _cli("train").build_parser()
    for args, words in ((["--refine-batch", "0"], "must be at least 1"), (["--refine-lr", "nan"], "not a finite"),
                        (["--min-det-score", "2"], "must be at most 1")):
        with pytest.raises(SystemExit):
            parser.parse_args(["-d", "x", "-o", "y", *args])
        assert words in capsys.readouterr().err


def test_prompt_file_with_a_byte_order_mark(tmp_path):
    from personalize.prompts import load_prompts

    path = tmp_path / "p.json"
    path.write_bytes("\ufeff".encode() + json.dumps(["a boy", "un garçon"], ensure_ascii=False).encode())
    assert load_prompts(path) == ["a boy", "un garçon"]


def test_a_prompt_longer_than_the_context_warns_naming_what_was_dropped(stack, caplog):
    from models.pipeline import UniDiffuserT2I

    pipe = UniDiffuserT2I.from_pretrained(stack["weights"], device="cpu")
    long = "a boy " + "standing on a long sandy beach at sunset " * 10 + "holding a red umbrella"
    tokens = pipe.text_encoder.tokenizer.encode(long)
    assert len(tokens) > 75
    with caplog.at_level(logging.WARNING, logger="models.pipeline"):
        pipe.encode_text(["a boy", long])
        pipe.encode_text([long])  # once per prompt
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and repr(long) in warnings[0] and "77-token context" in warnings[0]
    assert warnings[0].endswith("'holding a red umbrella'") or "holding a red umbrella'" in warnings[0]
    assert pipe.text_encoder.dropped("a boy") == ""


# ------------------------------------------------------------------------------- GPU-only tools
def _bench_main(module: str):
    return importlib.import_module(module).main


@NO_GPU
@pytest.mark.parametrize("module,argv,words", [
    ("eval.bench.sample", [], "sees no CUDA GPU"),
    ("eval.bench.sample", ["--all"], "sees no CUDA GPU"),
    ("eval.bench.levers", [], "sees no CUDA GPU"),
    ("eval.bench.forward", [], "sees no CUDA GPU"),
    ("eval.bench.pretraining", [], "python -m eval.bench.pretraining needs a CUDA GPU"),
    ("eval.bench.probe_fp8", ["--parts", "error,speed"], "--parts speed needs a CUDA device"),
])
def test_gpu_only_tools_stop_with_one_line(module, argv, words, capsys, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert run_cli(_bench_main(module), argv) == 2
    _one_error_line(capsys.readouterr().err, words)


@NO_GPU
def test_time_loading_stops_with_one_line(stack, capsys):
    from eval.bench.time_loading import main

    assert main(["--weights", str(stack["weights"])]) == 2
    _one_error_line(capsys.readouterr().err, "sees no CUDA GPU")


def test_gpu_e2e_uses_the_venv_like_the_other_scripts():
    text = (ROOT / "scripts" / "gpu_e2e.sh").read_text()
    assert "PY=.venv/bin/python" in text and "${PY:-python3}" not in text


# --------------------------------------------------------------------------------- eval.score
def test_score_with_a_damaged_clip_file_is_one_line(stack, tmp_path, capsys):
    from eval.score import main

    good = (stack["weights"] / "models" / "ViT-B-32.pt").read_bytes()
    for name, data, words in (("empty.pt", b"", "the file is empty"),
                              ("cut.pt", good[: len(good) // 2], "could not load image CLIP weights"),
                              ("noise.pt", np.random.default_rng(0).bytes(4096), "could not load image CLIP weights"),
                              # an opcode on an empty stack: IndexError inside torch's unpickler
                              ("opcodes.pt", b"\x80\x02\x86.", "could not load image CLIP weights")):
        (tmp_path / name).write_bytes(data)
        assert run_cli(main, ["--clip", str(tmp_path / name), "--face-pack", str(stack["pack"]), "--outputs",
                              str(tmp_path), "--prompts", str(tmp_path), "--train-data", str(tmp_path),
                              "--device", "cpu", "--quiet"]) == 2
        _one_error_line(capsys.readouterr().err, name, words)
