"""Ablation results: one JSON per (identity, settings) run, loaded, aggregated and plotted.

The notebook eval/notebooks/ablation.ipynb only calls these functions; eval/make_ablation_inputs.py
writes the files. A result file:

    {"format": "unidiffuser-faceid-ablation", "version": 1, "source": "scored" | "synthetic",
     "identity": "boy1",
     "settings": {"num_tokens": 4, "injection": "extra_tokens", "id_scale": 1.0, "cfg": 7.0,
                  "refine_steps": 0, ...},
     "scores": {"face": ..., "clip_img": ..., "text": ...},          # eval.competition_scorer, mean of prompts
     "metrics": {"detection_rate": ..., "diversity_clip": ..., "diversity_face": ...,
                 "copy_paste_gap": ...}}                             # eval.metrics
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import UserError

FORMAT = "unidiffuser-faceid-ablation"
VERSION = 1
AXES = ("num_tokens", "injection", "id_scale", "cfg", "refine_steps")
AXIS_LABELS = {"num_tokens": "identity tokens K", "injection": "injection mode", "id_scale": "identity scale",
               "cfg": "guidance scale", "refine_steps": "refinement steps"}
SCORE_KEYS = ("face", "clip_img", "text")
METRIC_KEYS = ("detection_rate", "diversity_clip", "diversity_face", "copy_paste_gap")


class AblationError(UserError, ValueError):
    """A result file is malformed, or there is nothing to show."""


@dataclass(frozen=True)
class AblationResult:
    identity: str
    settings: dict[str, Any]
    values: dict[str, float]  # scores and metrics, one flat dict
    source: str  # "scored" or "synthetic"
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def make_result(identity: str, settings: dict[str, Any], scores: dict[str, float], metrics: dict[str, float],
                source: str = "scored", **extra: Any) -> dict:
    """The JSON object of one result file (see the module docstring)."""
    missing = [a for a in AXES if a not in settings]
    if missing:
        raise AblationError(f"settings lack {missing}; every result names all of {list(AXES)}")
    return {"format": FORMAT, "version": VERSION, "source": source, "identity": identity,
            "settings": dict(settings), "scores": {k: float(scores[k]) for k in SCORE_KEYS},
            "metrics": {k: (None if metrics.get(k) is None else float(metrics[k])) for k in METRIC_KEYS}, **extra}


def result_from_score_report(report: dict, settings: dict[str, Any], identity: str | None = None,
                             task: str | None = None, source: str = "scored") -> dict:
    """A result object from an `eval.score --json` report: the given task's (or the only task's) scores."""
    tasks = report.get("tasks") or []
    if task is not None:
        tasks = [t for t in tasks if t["task"] == task]
    if len(tasks) != 1:
        names = [t["task"] for t in report.get("tasks") or []]
        raise AblationError(f"the score report holds tasks {names}; name the one to use")
    t = tasks[0]
    m = ((report.get("metrics") or {}).get("tasks") or {}).get(t["task"]) or {}
    cp = m.get("copy_paste") or {}
    metrics = {"detection_rate": m.get("detection_rate"), "diversity_clip": m.get("diversity_clip"),
               "diversity_face": m.get("diversity_face"), "copy_paste_gap": cp.get("gap")}
    return make_result(identity or t["identity"], settings, {k: t[k] for k in SCORE_KEYS}, metrics, source)


def _number(v: Any) -> float:
    return float("nan") if v is None else float(v)


def parse_result(data: dict, path: str = "") -> AblationResult:
    if data.get("format") != FORMAT:
        raise AblationError(f"{path or 'result'}: not an ablation result (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise AblationError(f"{path}: ablation result version {data.get('version')}, this code reads {VERSION}")
    try:
        settings = dict(data["settings"])
        values = {k: _number(data["scores"][k]) for k in SCORE_KEYS}
        values.update({k: _number(data.get("metrics", {}).get(k)) for k in METRIC_KEYS})
    except (KeyError, TypeError, ValueError) as e:
        raise AblationError(f"{path}: malformed ablation result ({type(e).__name__}: {e})") from e
    missing = [a for a in AXES if a not in settings]
    if missing:
        raise AblationError(f"{path}: settings lack {missing}")
    known = {"format", "version", "source", "identity", "settings", "scores", "metrics"}
    return AblationResult(str(data.get("identity", "")), settings, values, str(data.get("source", "scored")), path,
                          {k: v for k, v in data.items() if k not in known})


def load_results(folder: str | os.PathLike) -> list[AblationResult]:
    """Every ablation result `*.json` in folder (sorted by name); other JSON files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AblationError(f"ablation results folder {folder} does not exist; write it with "
                            "python -m eval.make_ablation_inputs")
    out = []
    for f in sorted(folder.glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AblationError(f"{f}: not valid JSON ({e})") from e
        if isinstance(data, dict) and data.get("format") == FORMAT:
            out.append(parse_result(data, str(f)))
    if not out:
        raise AblationError(f"no ablation results in {folder}; write them with python -m eval.make_ablation_inputs")
    return out


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def axis_values(results: Sequence[AblationResult], axis: str) -> list[Any]:
    return sorted({r.settings[axis] for r in results}, key=_sort_key)


def varied_axes(results: Sequence[AblationResult]) -> list[str]:
    """The axes with more than one value, in AXES order."""
    return [a for a in AXES if len(axis_values(results, a)) > 1]


@dataclass(frozen=True)
class AxisPoint:
    value: Any
    mean: float
    std: float
    n: int


def marginal(results: Sequence[AblationResult], axis: str, metric: str) -> list[AxisPoint]:
    """Per value of `axis`: mean and std of `metric` over every result with that value (other axes
    and identities pooled); NaN values are left out."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for r in results:
        v = r.values.get(metric, float("nan"))
        if not math.isnan(v):
            groups[r.settings[axis]].append(v)
    return [AxisPoint(value, float(np.mean(groups[value])) if groups[value] else float("nan"),
                      float(np.std(groups[value])) if groups[value] else float("nan"), len(groups[value]))
            for value in axis_values(results, axis)]


def describe(results: Sequence[AblationResult]) -> str:
    """One paragraph: how many results, which identities, which axes vary, synthetic or scored."""
    sources = sorted({r.source for r in results})
    ids = sorted({r.identity for r in results})
    lines = [f"{len(results)} results, identities: {', '.join(ids)}; source: {', '.join(sources)}"]
    for a in AXES:
        lines.append(f"  {AXIS_LABELS[a]}: {', '.join(str(v) for v in axis_values(results, a))}")
    if "synthetic" in sources:
        lines.append("NOTE: synthetic results (made-up numbers for testing the notebook), not measurements")
    return "\n".join(lines)


def results_table(results: Sequence[AblationResult], metrics: Sequence[str] = SCORE_KEYS + ("detection_rate",),
                  sort_by: str = "face") -> str:
    """One row per result, best `sort_by` first."""
    from eval.tables import format_table

    rows = sorted(results, key=lambda r: -np.nan_to_num(r.values.get(sort_by, float("nan")), nan=-np.inf))
    axes = list(AXES)
    return format_table([[r.identity] + [_setting(r.settings[a]) for a in axes] + [r.values.get(m) for m in metrics]
                         for r in rows], ["identity"] + axes + list(metrics))


def _setting(v: Any) -> Any:
    """Settings print as given (0.5, 7), not with the scores' four decimals."""
    return f"{v:g}" if isinstance(v, float) else v


def best_settings(results: Sequence[AblationResult], metric: str = "face", floor: dict[str, float] | None = None
                  ) -> AblationResult | None:
    """The result with the highest `metric` among those meeting every floor (e.g. {"text": 0.25})."""
    ok = [r for r in results if all(r.values.get(k, float("nan")) >= v for k, v in (floor or {}).items())
          and not math.isnan(r.values.get(metric, float("nan")))]
    return max(ok, key=lambda r: r.values[metric]) if ok else None


# ------------------------------------------------------------------------------------------- plots
def plot_axes(results: Sequence[AblationResult], metrics: Sequence[str] = SCORE_KEYS,
              axes: Sequence[str] | None = None):
    """One panel per axis (default: the varied ones): each metric's marginal mean +- std against the
    axis values. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    axes = list(axes) if axes is not None else varied_axes(results) or [AXES[0]]
    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.4), squeeze=False)
    for ax, axis in zip(panels[0], axes):
        values = axis_values(results, axis)
        xs = np.arange(len(values))
        for metric in metrics:
            pts = marginal(results, axis, metric)
            ax.errorbar(xs, [p.mean for p in pts], yerr=[p.std for p in pts], marker="o", capsize=3, label=metric)
        ax.set_xticks(xs, [str(v) for v in values])
        ax.set_xlabel(AXIS_LABELS.get(axis, axis))
        ax.grid(alpha=0.3)
    panels[0][0].set_ylabel("score (mean over the other settings)")
    panels[0][-1].legend(fontsize=8)
    if any(r.source == "synthetic" for r in results):
        fig.suptitle("SYNTHETIC numbers (notebook test data, not measurements)", color="red")
    fig.tight_layout()
    return fig


def plot_tradeoff(results: Sequence[AblationResult], x: str = "text", y: str = "face", color_axis: str = "id_scale"):
    """Identity against prompt following: one point per result, coloured by `color_axis`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    values = axis_values(results, color_axis)
    cmap = plt.get_cmap("viridis", max(len(values), 2))
    for i, v in enumerate(values):
        sel = [r for r in results if r.settings[color_axis] == v]
        ax.scatter([r.values[x] for r in sel], [r.values[y] for r in sel], color=cmap(i), label=str(v), s=24)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(title=AXIS_LABELS.get(color_axis, color_axis), fontsize=8)
    ax.grid(alpha=0.3)
    if any(r.source == "synthetic" for r in results):
        ax.set_title("SYNTHETIC numbers", color="red")
    fig.tight_layout()
    return fig
