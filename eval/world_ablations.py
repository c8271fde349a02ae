"""Ablations of the identity module in the identity world (issue 16), read from committed results.

    python -m eval.world_ablations [--plot eval/results/world_ablations.png]

Two views that no single evaluation JSON draws:

    photos     identity similarity and edit success per method at each photo count of one
               `python -m eval.world` run (its `by_photos`; default eval/results/synthworld.json)
    modules    per-identity identity gain over text only (over the faces found) of identity modules
               evaluated on the same test identities, against the pretraining diagnostic `id_gain` at
               the end of each module's training log: does the diagnostic rank modules as images do?
    variants   modules trained with one setting changed (K tokens, text-slot injection, self-conditioning
               instead of pairing) beside a reference of the committed recipe, and the committed module
               with per-photo tokens instead of the mean embedding's, each scored by
               `python -m eval.identity_grid` on the same validation identities: identity gain, edit
               success and faces found against text only, and again against `id_gain`
    guidance   identity scale x text guidance: identity_grid runs of the committed module at two text
               guidance scales (identity gain and faces found per identity scale)

The identity module's sampling settings (scale, identity guidance, refinement steps) also have their own
grid and plot: `python -m eval.identity_grid`, `eval/notebooks/identity_grid.ipynb`. The notebook
`eval/notebooks/world_ablations.ipynb` shows every view.
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


@dataclass(frozen=True)
class Variant:
    """A module trained with one setting changed, scored by eval.identity_grid (its JSON) at `id_scale`."""

    name: str
    grid: Path
    log: Path
    id_scale: float = 0.6  # the committed recipe's sampling strength, chosen on validation identities
    photo_tokens: str = "mean"  # sample.py --photo-tokens of the row


VARIANTS_DIR = RESULTS / "world_variants"
TRAINING = RESULTS / "world_training"
# 12,000 training identities x 4 renders, 3,000 steps each, the committed recipe (pretrain/configs/world.json)
# with one change; then the committed module (4,000 steps) with mean and per-photo tokens. All scored on the
# same 8 validation identities of seed 101 (docs/identity_world_eval.md section 4).
VARIANTS = (
    Variant("K=4 (recipe)", VARIANTS_DIR / "identity_grid_k4.json", TRAINING / "call21_23_identity_k4_train.log"),
    Variant("K=1", VARIANTS_DIR / "identity_grid_k1.json", TRAINING / "call21_23_identity_k1_train.log"),
    Variant("K=16", VARIANTS_DIR / "identity_grid_k16.json", TRAINING / "call21_23_identity_k16_train.log"),
    Variant("text slots, K=4", VARIANTS_DIR / "identity_grid_slots.json",
            TRAINING / "call21_23_identity_slots_train.log"),
    Variant("self-conditioning", VARIANTS_DIR / "identity_grid_self.json",
            TRAINING / "call21_23_identity_self_train.log"),
    Variant("committed (4,000 steps)", RESULTS / "identity_grid_face4.json",
            TRAINING / "call17_18_identity_face4_train.log"),
    Variant("committed, per-photo tokens", VARIANTS_DIR / "identity_grid_each.json",
            TRAINING / "call17_18_identity_face4_train.log", id_scale=1.0, photo_tokens="each"),
)


@dataclass(frozen=True)
class GuidanceGrid:
    """An identity_grid JSON of one text guidance scale; its identity scales times `unit` are the committed
    module's (the committed module folds 0.6 into its gates: a grid of the unfolded module has unit 1/0.6)."""

    grid: Path
    unit: float = 1.0


GUIDANCE = (GuidanceGrid(RESULTS / "identity_grid_cfg3.json"),
            GuidanceGrid(RESULTS / "identity_grid_face4.json", unit=1 / 0.6))


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


def _gain_point(name: str, log: str | Path, found: dict, seed: int) -> dict:
    """A module's point: its training log's last id_gain (with its standard error) beside its paired identity
    gain over text only over the faces found (`found`: a bootstrap entry, mean with its 95 % interval)."""
    gain, se = last_id_gain(Path(log))
    return {"name": name, "id_gain": gain, "id_gain_se": se, "identity_gain": found["mean"], "lo": found["lo"],
            "hi": found["hi"], "identities": found["n"], "seed": seed}


def module_points(modules=MODULES) -> list[dict]:
    """Per module: its id_gain and its paired identity gain over text only (mean and 95 % interval)."""
    points = []
    for m in modules:
        result = json.loads(Path(m.results).read_text())
        found = result["paired"]["encoder - text_only"]["identity_similarity_found"]
        points.append(_gain_point(m.name, m.log, found, result["renderer_seed"]))
    return points


def _grid_row(grid: dict, id_scale: float, photo_tokens: str = "mean") -> dict | None:
    """The identity_grid row at `id_scale` and `photo_tokens`, no identity guidance, no refinement."""
    return next((r for r in grid["rows"] if abs(r["id_scale"] - id_scale) < 1e-9 and r["id_guidance"] is None
                 and r["refine_steps"] == 0 and r.get("photo_tokens", "mean") == photo_tokens), None)


def variant_rows(variants=VARIANTS) -> list[dict]:
    """Per variant: id_gain, and its paired differences from text only on the validation identities (identity
    over the faces found with its 95 % interval, identity over all images, edit success, faces found)."""
    rows, setup = [], None
    for v in variants:
        grid = json.loads(Path(v.grid).read_text())
        if setup is None:
            setup = grid["validation"]
        elif grid["validation"] != setup:
            raise ValueError(f"{v.grid}: validation {grid['validation']} differs from the first variant's {setup}")
        row = _grid_row(grid, v.id_scale, v.photo_tokens)
        if row is None:
            raise ValueError(f"{v.grid}: no row at identity scale {v.id_scale:g}, {v.photo_tokens} photo tokens, "
                             "without guidance or refinement")
        p = row["paired"]
        rows.append({**_gain_point(v.name, v.log, p["identity_similarity_found"], setup["seed"]),
                     "identity_gain_all": p["identity_similarity"]["mean"],
                     "edit_minus_text": p["edit_success"]["mean"], "faces_minus_text": p["face_found"]["mean"],
                     "faces": row["means"]["face_found"], "copy_paste": row["copy_paste"]["mean"]})
    return rows


def guidance_rows(grids=GUIDANCE) -> list[dict]:
    """[{cfg, id_scale (the committed module's), identity_gain, lo, hi, faces, edit_minus_text}] of each grid."""
    rows = []
    for g in grids:
        grid = json.loads(Path(g.grid).read_text())
        for r in grid["rows"]:
            if r["id_guidance"] is not None or r["refine_steps"] or r.get("photo_tokens", "mean") != "mean":
                continue
            found = r["paired"]["identity_similarity_found"]
            rows.append({"cfg": grid["validation"]["cfg"], "id_scale": round(r["id_scale"] * g.unit, 3),
                         "identity_gain": found["mean"], "lo": found["lo"], "hi": found["hi"],
                         "faces": r["means"]["face_found"], "edit_minus_text": r["paired"]["edit_success"]["mean"]})
    return sorted(rows, key=lambda r: (r["cfg"], r["id_scale"]))


def _against_id_gain(ax, points: list[dict], title: str) -> None:
    for p in points:
        ax.errorbar(p["id_gain"], p["identity_gain"], xerr=p["id_gain_se"],
                    yerr=[[p["identity_gain"] - p["lo"]], [p["hi"] - p["identity_gain"]]], fmt="o", capsize=3)
        ax.annotate(p["name"], (p["id_gain"], p["identity_gain"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("id_gain at the end of pretraining (diagnostic)")
    ax.set_ylabel("identity minus text only, faces found")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def plot(results: list[dict], points: list[dict], variants: list[dict] | None = None,
         guidance: list[dict] | None = None):
    """Top: identity similarity and edit success by photo count and method (one line style per eval.world
    run), test modules' identity gain against their id_gain; bottom (when given): the variants' identity
    gain against their id_gain, then identity gain and faces found by identity scale per text guidance.
    Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    rows = 2 if variants or guidance else 1
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.8 * rows), squeeze=False)
    a, b, c = axes[0]
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
    seeds = sorted({p["seed"] for p in points})
    _against_id_gain(c, points, f"modules on the same test identities (seed {', '.join(map(str, seeds))})")
    if rows == 2:
        d, e, f = axes[1]
        if variants:
            _against_id_gain(d, variants, f"variants on validation identities (seed {variants[0]['seed']})")
        for cfg in sorted({r["cfg"] for r in guidance or []}):
            mine = [r for r in guidance if r["cfg"] == cfg]
            x = [r["id_scale"] for r in mine]
            y = [r["identity_gain"] for r in mine]
            e.errorbar(x, y, yerr=[[v - r["lo"] for v, r in zip(y, mine, strict=True)],
                                   [r["hi"] - v for v, r in zip(y, mine, strict=True)]], fmt="o-", capsize=3,
                       label=f"text guidance {cfg:g}")
            f.plot(x, [r["faces"] for r in mine], "o-", label=f"text guidance {cfg:g}")
        e.axhline(0, color="grey", lw=0.8)
        for ax, what in ((e, "identity minus text only, faces found"), (f, "faces found")):
            ax.set_xlabel("identity scale (the committed module's --id-scale)")
            ax.set_ylabel(what)
            ax.set_title(f"{what}, validation identities", fontsize=9)
            ax.grid(alpha=0.3)
            if guidance:
                ax.legend(fontsize=7)
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
    points, variants, guidance = module_points(), variant_rows(), guidance_rows()
    for r in (r for result in results for r in photo_rows(result)):
        print(f"photos {r['photos']:>2}  {r['method']:<10} identity {r['identity_similarity']:+.3f}  "
              f"edit {r['edit_success']:.3f}")
    for pt in points:
        print(f"{pt['name']:<30} id_gain {pt['id_gain']:.4f}  identity gain {pt['identity_gain']:+.3f} "
              f"[{pt['lo']:+.3f}, {pt['hi']:+.3f}]")
    for v in variants:
        print(f"{v['name']:<30} id_gain {v['id_gain']:.4f}  identity gain {v['identity_gain']:+.3f} "
              f"[{v['lo']:+.3f}, {v['hi']:+.3f}]  edit {v['edit_minus_text']:+.3f}  faces {v['faces']:.2f}")
    for g in guidance:
        print(f"text guidance {g['cfg']:g}  identity scale {g['id_scale']:g}  identity gain {g['identity_gain']:+.3f}  "
              f"faces {g['faces']:.2f}")
    if args.plot:
        from models.atomic import atomic_write

        fig = plot(results, points, variants, guidance)
        atomic_write(args.plot, lambda path: fig.savefig(path, format="png", dpi=110))
        print(f"written to {args.plot}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
