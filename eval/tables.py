"""Plain-text tables for score reports (printed by the CLIs; the JSON holds the same numbers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from eval.competition_scorer import FIVE_NUMBERS, SCORES, ScoreReport


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], floatfmt: str = ".4f") -> str:
    """Left-aligned text columns, numbers right-aligned; None/NaN shown as '-'."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[j], (int, float)) or row[j] is None for row in rows) if rows else False
               for j in range(len(headers))]
    widths = [max([len(h)] + [len(r[j]) for r in body]) for j, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths])] + [line(r) for r in body])


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def per_prompt_table(report: ScoreReport) -> str:
    rows = [(t.task, p.index, _short(p.prompt), p.mean("face"), p.mean("clip_img"), p.mean("text"),
             f"{sum(im.face_found for im in p.images)}/{len(p.images)}")
            for t in report.tasks for p in t.prompts]
    return format_table(rows, ["task", "#", "prompt", "face", "clip_img", "text", "faces"])


def per_task_table(report: ScoreReport) -> str:
    rows = [(t.identity, t.task, t.role, len(t.prompts), t.mean("face"), t.mean("clip_img"), t.mean("text"),
             sum(im.status != "ok" for im in t.images)) for t in report.tasks]
    return format_table(rows, ["identity", "task", "layout", "prompts", "face", "clip_img", "text", "bad images"])


def summary_table(report: ScoreReport) -> str:
    summary = report.summary()
    parts = []
    if "plain" in summary:
        s = summary["plain"]
        parts.append(format_table([[s[k] for k in SCORES]], list(SCORES))
                     + f"\n(mean over {s['identities']} identities, <name>.json layout)")
    if "five" in summary:
        s = summary["five"]
        keys = [k for k in FIVE_NUMBERS if k in s]
        parts.append(format_table([[s[k] for k in keys]], keys)
                     + f"\n(mean over {s['identities_sim']} _sim and {s['identities_edit']} _edit identities)")
    return "\n\n".join(parts)


def render_report(report: ScoreReport) -> str:
    """Per-prompt table, per-identity table, the summary numbers and the warnings."""
    out = ["per prompt (mean of its images)", per_prompt_table(report), "",
           "per identity and task (mean of its prompts)", per_task_table(report), "",
           "summary", summary_table(report)]
    if report.warnings:
        out += ["", "warnings:"] + [f"  - {w}" for w in report.warnings]
    return "\n".join(out)
