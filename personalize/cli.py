"""Shared command-line plumbing for train.py and sample.py: clean errors (device and dtype choice:
models/device.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run main; the project's known user-facing errors print one clear line and exit 2."""
    from encoder.face_analysis import FaceRejected
    from encoder.photos import PhotoError
    from models.paths import WeightsError
    from personalize.extract import NoUsablePhotos
    from personalize.prompts import PromptFileError
    from personalize.record import RecordError

    try:
        return main(argv)
    except (WeightsError, RecordError, PromptFileError, NoUsablePhotos, PhotoError, FaceRejected,
            FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        return 130
