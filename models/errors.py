"""Errors a user can fix, and the one runner every command line goes through.

    class RecordError(UserError, RuntimeError): ...       # a user-fixable error of one module
    raise UserError("prompt file p.json does not exist", hint="pass --prompt_path <file>.json")

    if __name__ == "__main__":
        sys.exit(run_cli(main))

    p.add_argument("--n", type=number(int, low=1))            # "--n 0": argparse error, exit 2
    p.add_argument("--cfg", type=number(float, 0, 100))       # nan, inf, -1, 1e9: argparse error

A `UserError` is about the user's inputs (a missing or damaged file, a bad argument, a folder that
cannot be written) and says so in one line, with an optional `hint` saying what to do. `run_cli`
prints it as `error: ...` (and `hint: ...`) and exits 2; Ctrl-C exits 130 with one line; anything
else, `ValueError` included, is a bug or an unexpected condition and keeps its traceback.

`number` is the one argparse `type` for numeric options: a bad value is refused while the command
line is parsed (argparse's usage line and exit 2), before any work.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class UserError(Exception):
    """Something the user can fix; the message names it, `hint` (one line, optional) says what to do.

    A subclass may set `exit_code` for an outcome that scripts tell apart (2 by default).
    """

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """main(argv)'s exit status; a UserError prints one line (two with its hint) and returns its
    exit code, Ctrl-C returns 130. Everything else propagates with its traceback."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def number(kind: type = float, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse `type`: the text read as `kind` (int or float), finite, within [low, high] (either
    bound optional); anything else raises argparse.ArgumentTypeError saying which rule it breaks."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {text})")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some of its messages
    return parse
