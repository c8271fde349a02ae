"""Ablations of the identity module in the identity world (issue 16), read from committed results.

    python -m eval.world_ablations [--plot eval/results/world_ablations.png]

Two views that no single evaluation JSON draws:

    photos     identity similarity and edit success per method at each photo count of one
               `python -m eval.world` run (its `by_photos`; default eval/results/synthworld.json)
    modules    per-identity identity gain over text only (over the faces found) of identity modules
               evaluated on the same test identities, against the pretraining diagnostic `id_gain` at
               the end of each module's training log: does the diagnostic rank modules as images do?

The identity module's sampling settings (scale, identity guidance, refinement steps) have their own
grid and plot: `python -m eval.identity_grid`, `eval/notebooks/identity_grid.ipynb`. The notebook
`eval/notebooks/world_ablations.ipynb` shows both views of this module.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ("encoder", "finetune", "text_only", "ceiling")
ID_GAIN = re.compile(r"id_gain (-?[0-9.]+) \+- ([0-9.]+)")


@dataclass(frozen=True)
class Module:
    """An identity module's evaluation (an eval.world JSON) and its training log (where id_gain is)."""

    name: str
    results: Path
    log: Path


# The modules evaluated on the same 25 test identities of seed 9001 (docs/identity_world_eval.md section 4).
MODULES = (
    Module("4,000 ids x 6", RESULTS / "world_modules/seed9001_committed_h200.json",
           RESULTS / "world_training/call13_identity.log"),
    Module("12,000 ids x 4", RESULTS / "world_modules/seed9001_base_h200.json",
           RESULTS / "world_training/call17_18_identity_base_train.log"),
    Module("12,000 ids x 4, face loss x5, scale 1", RESULTS / "world_modules/seed9001_face4_h200.json",
           RESULTS / "world_training/call17_18_identity_face4_train.log"),
)


def photo_rows(result: dict) -> list[dict]:
    """[{photos, method, identity_similarity, identity_similarity_found, edit_success}] from an eval.world
    JSON's by_photos (identity over all prompts, edit success over the edit prompts)."""
    rows = []
    for k, metrics in sorted(result["by_photos"].items(), key=lambda kv: int(kv[0])):
        for method in (m for m in METHOD_ORDER if m in metrics["identity_similarity"]):
            rows.append({"photos": int(k), "method": method,
                         "identity_similarity": metrics["identity_similarity"][method]["all"]["mean"],
                         "identity_similarity_found": metrics["identity_similarity_found"][method]["all"]["mean"],
                         "edit_success": metrics["edit_success"][method]["edit"]["mean"]})
    return rows


def last_id_gain(log: Path) -> tuple[float, float]:
    """(id_gain, its standard error) of the last diagnostic line in a training log."""
    found = ID_GAIN.findall(log.read_text())
    if not found:
        raise ValueError(f"{log}: no 'id_gain X +- Y' line")
    return float(found[-1][0]), float(found[-1][1])


def module_points(modules=MODULES) -> list[dict]:
    """Per module: its id_gain and its paired identity gain over text only (mean and 95 % interval)."""
    points = []
    for m in modules:
        result = json.loads(Path(m.results).read_text())
        gain, se = last_id_gain(Path(m.log))
        paired = result["paired"]["encoder - text_only"]["identity_similarity_found"]
        points.append({"name": m.name, "id_gain": gain, "id_gain_se": se, "identity_gain": paired["mean"],
                       "lo": paired["lo"], "hi": paired["hi"], "identities": paired["n"],
                       "seed": result["renderer_seed"]})
    return points


def plot(results: list[dict], points: list[dict]):
    """Left: identity similarity by photo count and method, one line style per eval.world run; middle: edit
    success; right: modules' identity gain against their id_gain. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    ks: set[int] = set()
    for result, style in zip(results, ("o-", "s--", "^:", "d-."), strict=False):
        run = f"{result['counts']['identities']} ids, seed {result['renderer_seed']}"
        rows = photo_rows(result)
        for method in METHOD_ORDER:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            x = [r["photos"] for r in mine]
            ks.update(x)
            a.plot(x, [r["identity_similarity"] for r in mine], style, color=colours[method], label=f"{method} ({run})")
            b.plot(x, [r["edit_success"] for r in mine], style, color=colours[method])
    for ax, title in ((a, "identity similarity"), (b, "edit success (edit prompts)")):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
        ax.set_xlabel("photos per identity")
        ax.set_title(f"{title}, test identities", fontsize=9)
        ax.grid(alpha=0.3)
    a.legend(fontsize=6)
    for p in points:
        c.errorbar(p["id_gain"], p["identity_gain"], xerr=p["id_gain_se"],
                   yerr=[[p["identity_gain"] - p["lo"]], [p["hi"] - p["identity_gain"]]], fmt="o", capsize=3)
        c.annotate(p["name"], (p["id_gain"], p["identity_gain"]), fontsize=7, xytext=(4, 4),
                   textcoords="offset points")
    c.axhline(0, color="grey", lw=0.8)
    c.set_xlabel("id_gain at the end of pretraining (diagnostic)")
    c.set_ylabel("identity minus text only, faces found")
    seeds = sorted({p["seed"] for p in points})
    c.set_title(f"modules on the same test identities (seed {', '.join(map(str, seeds))})", fontsize=9)
    c.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.world_ablations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, nargs="+", default=[RESULTS / "synthworld.json"],
                   help="eval.world JSONs whose photo counts are drawn (default: eval/results/synthworld.json)")
    p.add_argument("--plot", type=Path, default=None, help="write the figure here (PNG)")
    args = p.parse_args(argv)
    from models.errors import UserError

    missing = [str(r) for r in args.results if not r.is_file()]
    if missing:
        raise UserError(f"no evaluation JSON at {', '.join(missing)}: run python -m eval.world first")
    results = [json.loads(r.read_text()) for r in args.results]
    points = module_points()
    for r in (r for result in results for r in photo_rows(result)):
        print(f"photos {r['photos']:>2}  {r['method']:<10} identity {r['identity_similarity']:+.3f}  "
              f"edit {r['edit_success']:.3f}")
    for pt in points:
        print(f"{pt['name']:<30} id_gain {pt['id_gain']:.4f}  identity gain {pt['identity_gain']:+.3f} "
              f"[{pt['lo']:+.3f}, {pt['hi']:+.3f}]")
    if args.plot:
        from models.atomic import atomic_write

        fig = plot(results, points)
        atomic_write(args.plot, lambda path: fig.savefig(path, format="png", dpi=110))
        print(f"written to {args.plot}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
