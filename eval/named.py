"""NAME=VALUE command-line values (`--encoder face4=runs/v_face4/faceid_encoder`), parsed in one place for
the eval CLIs that compare several named things side by side."""

from __future__ import annotations

import re

from models.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def split_named(spec: str, option: str, *, name_required: bool = True) -> tuple[str | None, str]:
    """"NAME=VALUE" -> (NAME, VALUE). NAME takes letters, digits, '.' and '-'; without '=' the value is
    unnamed (None, spec) where name_required is False, otherwise a one-line UserError naming `option`."""
    name, sep, value = spec.partition("=")
    if not sep:
        if name_required:
            raise UserError(f"{option} {spec}: expected NAME=VALUE")
        return None, spec
    if not NAME.fullmatch(name) or not value:
        raise UserError(f"{option} {spec}: expected NAME=VALUE, the name of letters, digits, '.' and '-'")
    return name, value
