"""Where a result came from: the git commit the code ran at, and whether the tree had changes.

    git_provenance()   {"git_commit": "<40 hex>" | "unknown", "git_dirty": bool | None}

A copy of the tree that runs elsewhere (the GPU host gets files, not `.git`) names its commit in the
environment variable FACEID_GIT_COMMIT; its dirty flag is then unknown (None). Every result JSON takes
these two fields from here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from models.paths import REPO_ROOT

COMMIT_ENV = "FACEID_GIT_COMMIT"


def git_provenance(repo: str | os.PathLike = REPO_ROOT) -> dict:
    """The commit and dirty flag of the checkout at `repo` (COMMIT_ENV first); "unknown" without git."""
    if os.environ.get(COMMIT_ENV):
        return {"git_commit": os.environ[COMMIT_ENV], "git_dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(repo), capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):  # no git installed, or not a checkout
        return {"git_commit": "unknown", "git_dirty": None}
