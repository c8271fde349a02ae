"""models.provenance: the one place result JSONs get their commit and dirty flag from."""

import re
import subprocess

from models.provenance import COMMIT_ENV, git_provenance


def test_named_commit_wins(monkeypatch, tmp_path):
    """A copy of the tree elsewhere (no .git) names its commit; its dirty flag is then unknown."""
    monkeypatch.setenv(COMMIT_ENV, "abc1234")
    assert git_provenance(tmp_path) == {"git_commit": "abc1234", "git_dirty": None}


def test_a_checkout_reports_its_head_and_changes(monkeypatch, tmp_path):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_provenance(tmp_path) == {"git_commit": head, "git_dirty": False}
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    (tmp_path / "f.txt").write_text("two\n")
    assert git_provenance(tmp_path) == {"git_commit": head, "git_dirty": True}


def test_outside_a_checkout_is_unknown(monkeypatch, tmp_path):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_provenance(tmp_path) == {"git_commit": "unknown", "git_dirty": None}
