"""models/errors.py and the output-path checks of models/paths.py: which errors a command line shows
in one line (exit 2), which keep their traceback, and that every user-fixable error class is a UserError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.format import CorruptSample
from data_prep.shards import PrepError
from data_prep.sources import SourceError
from encoder.face_analysis import FaceRejected
from encoder.photos import PhotoError
from eval.ablation import AblationError
from eval.competition_scorer import ImageUnreadable, ScoreError
from eval.prompt_fidelity import ImageRewardUnavailable
from models.config_dict import ConfigError
from models.errors import UserError, run_cli
from models.paths import WeightsError, output_dir, output_file
from personalize.extract import NoUsablePhotos
from personalize.prompts import PromptFileError
from personalize.record import RecordError
from pretrain.checkpoint import CheckpointError, RunFolderInUse
from pretrain.data import DataError
from pretrain.train import TrainingDiverged

REPO = Path(__file__).resolve().parent.parent


def _raising(error: BaseException):
    def main(argv):
        raise error

    return main


def test_a_user_error_is_one_line_and_exit_2(capsys):
    assert run_cli(_raising(UserError("prompt file p.json does not exist"))) == 2
    assert capsys.readouterr().err == "error: prompt file p.json does not exist\n"
    assert run_cli(_raising(RecordError("no record in out/", hint="run train.py first"))) == 2
    assert capsys.readouterr().err == "error: no record in out/\nhint: run train.py first\n"


def test_main_gets_argv_and_its_status_is_returned():
    seen = []
    assert run_cli(lambda argv: seen.append(argv) or 0, ["--x", "1"]) == 0
    assert seen == [["--x", "1"]]


def test_anything_else_keeps_its_traceback(capsys):
    with pytest.raises(ValueError, match="a bug"):
        run_cli(_raising(ValueError("a bug")))
    with pytest.raises(FileNotFoundError):
        run_cli(_raising(FileNotFoundError(2, "No such file", "x")))
    assert capsys.readouterr().err == ""


def test_interrupt_exits_130(capsys):
    assert run_cli(_raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.startswith("interrupted")


def test_a_diverged_run_keeps_its_exit_code_3(capsys):
    assert run_cli(_raising(TrainingDiverged("3 non-finite steps in a row"))) == 3
    assert "non-finite" in capsys.readouterr().err


# every user-fixable class, with the base it had before (so `except ValueError` sites still catch it)
USER_ERRORS = [(WeightsError, RuntimeError), (FaceRejected, Exception), (PhotoError, Exception),
               (NoUsablePhotos, RuntimeError), (RecordError, RuntimeError), (PromptFileError, ValueError),
               (AblationError, ValueError), (ScoreError, RuntimeError), (ImageRewardUnavailable, RuntimeError),
               (DataError, ValueError), (SourceError, ValueError), (PrepError, RuntimeError),
               (ConfigError, ValueError), (CheckpointError, FileNotFoundError), (RunFolderInUse, FileExistsError),
               (TrainingDiverged, RuntimeError)]


@pytest.mark.parametrize("cls,old_base", USER_ERRORS, ids=[c.__name__ for c, _ in USER_ERRORS])
def test_user_fixable_errors_are_user_errors(cls, old_base):
    assert issubclass(cls, UserError) and issubclass(cls, old_base)
    e = cls("the message")
    assert str(e).endswith("the message") and e.hint is None


def test_internal_signals_are_not_user_errors():
    assert not issubclass(CorruptSample, UserError) and not issubclass(ImageUnreadable, UserError)


def test_output_dir(tmp_path):
    assert output_dir(tmp_path / "a" / "b").is_dir()
    assert output_dir(tmp_path / "c" / "d", create=False) == tmp_path / "c" / "d"
    assert not (tmp_path / "c").exists()  # checked, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder") as e:
        output_dir(tmp_path / "f", "--out")
    assert str(e.value).startswith("--out ") and e.value.hint
    with pytest.raises(UserError, match=r"f is a file"):
        output_dir(tmp_path / "f" / "sub", create=False)  # a file among the parents


def test_output_file(tmp_path):
    assert output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    with pytest.raises(UserError, match="is a folder"):
        output_file(tmp_path, "--json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        output_file(tmp_path / "f" / "r.json", "--json")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_commands_report_user_errors_in_one_line(tmp_path):
    p = _cli("-m", "pretrain.train", "--config", str(tmp_path / "none.json"), "--print-config")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [f"error: config file {tmp_path / 'none.json'} does not exist",
                                     "hint: see pretrain/configs/"]
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    p = _cli("-m", "models.t2i", "--prompt", "x", "--out", str(taken), "--device", "cpu")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[0] == f"error: --out {taken}: {taken} is a file, not a folder"
