"""Which people a method fails: an eval.world run's per-identity scores against the renderer's parameters.

    python -m eval.world_by_identity --work runs/world_eval [--seed S] [--photos 3] [--methods encoder,text_only]
        [--json eval/results/world_by_identity.json]

Reads the scored units of a finished (or partial) `python -m eval.world` work folder, averages each
identity's faces found and identity similarity (over the faces found) over its prompts and sampling seeds,
and puts them beside the person's own parameters, drawn again from the renderer seed and identity index
(`data_prep.faceworld.identity.identity_params`): hair colour, skin tone, class word. It reports, per method,
the means by hair colour and by skin tone and the correlation of faces found with hair and skin lightness,
so a failure that follows a trait of the person (not of the prompt) shows as a row, and a fix can be checked
on the same people.

The renderer seed comes from the work folder's `data/faceworld.json` (eval.world writes it), or `--seed` when
the folder came back without its data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from models.errors import UserError

HAIR_NAMES = ("black", "dark brown", "brown", "blond", "auburn", "grey")  # HAIR_COLORS' order
SKIN_NAMES = ("lightest", "light", "medium", "dark", "darkest")  # SKIN_TONES' order


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _groups(labels: list[str], values: np.ndarray) -> dict[str, dict]:
    return {name: {"n": int(sum(lab == name for lab in labels)),
                   "mean": float(np.mean([v for lab, v in zip(labels, values) if lab == name]))}
            for name in sorted(set(labels))}


def by_identity(work: Path, seed: int, method: str, photos: int) -> dict:
    """One method's per-identity table and its summaries by the person's traits."""
    from data_prep.faceworld.identity import HAIR_COLORS, SKIN_TONES, identity_params
    from eval.world import per_identity_by_name, scored_people

    people, seeds = scored_people(work, method, photos)
    names = [p.name for p in people]
    params = identity_params(seed, [p.identity for p in people])
    hair = params.p["hair_color"].astype(int)
    skin = params.p["skin"].astype(int)
    found_by_name = per_identity_by_name(work, method, photos, people, seeds, "all", "face_found")
    sim_by_name = per_identity_by_name(work, method, photos, people, seeds, "all", "identity_similarity_found")
    found = np.array([found_by_name[n] for n in names])
    sim = [sim_by_name.get(n) for n in names]
    rows = [{"name": n, "identity": people[i].identity, "class_word": params.class_words[i],
             "hair": HAIR_NAMES[hair[i]], "skin": SKIN_NAMES[skin[i]], "face_found": float(found[i]),
             "identity_similarity_found": sim[i]} for i, n in enumerate(names)]
    return {
        "identities": len(names),
        "face_found": float(found.mean()),
        "face_found_by_hair": _groups([r["hair"] for r in rows], found),
        "face_found_by_skin": _groups([r["skin"] for r in rows], found),
        "corr_face_found_hair_lightness": _corr(found, HAIR_COLORS[hair].mean(axis=1)),
        "corr_face_found_skin_lightness": _corr(found, SKIN_TONES[skin].mean(axis=1)),
        "below_0.8": [r["name"] for r in rows if r["face_found"] < 0.8],
        "rows": rows,
    }


def renderer_seed(work: Path, given: int | None) -> int:
    from eval.world import rendered_side, side_path

    side, path = rendered_side(work), side_path(work)
    if side is not None:
        seed = int(side["seed"])
        if given is not None and given != seed:
            raise UserError(f"--seed {given} differs from the renderer seed {seed} in {path}; leave --seed out")
        return seed
    if given is None:
        raise UserError(f"{path} is missing (a work folder that came back without its data): give the renderer "
                        "seed of its identities with --seed")
    return given


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.world_by_identity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="an eval.world work folder (its --out)")
    p.add_argument("--seed", type=int, default=None, help="renderer seed, when the folder lacks data/faceworld.json")
    p.add_argument("--photos", type=int, default=3, help="photo count of the units to read (default 3)")
    p.add_argument("--methods", default=None, help="comma-separated (default: every method scored in the folder)")
    p.add_argument("--json", default=None, help="write the result here (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    from eval.bench.common import environment
    from models.atomic import write_json_atomic

    args = build_parser().parse_args(argv)
    work = Path(args.work)
    if not (work / "scores").is_dir():
        raise UserError(f"{work} is not an eval.world work folder (no scores/ in it)")
    seed = renderer_seed(work, args.seed)
    methods = (args.methods.split(",") if args.methods
               else sorted(p.name for p in (work / "scores").iterdir() if p.is_dir()))
    result = {"work": str(work), "renderer_seed": seed, "photos": args.photos,
              "methods": {m: by_identity(work, seed, m, args.photos) for m in methods}}
    for m, r in result["methods"].items():
        hair = ", ".join(f"{k} {v['mean']:.2f} ({v['n']})" for k, v in r["face_found_by_hair"].items())
        corr = r["corr_face_found_hair_lightness"]
        print(f"{m}: faces found {r['face_found']:.2f} over {r['identities']} identities; by hair: {hair}; "
              f"correlation with hair lightness {'n/a' if corr is None else f'{corr:+.2f}'}")
    if args.json:
        write_json_atomic(Path(args.json), {**result, **environment("faceworld")}, indent=1)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
