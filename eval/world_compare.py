"""Two runs of one method on the same test identities, paired: B minus A per identity, with intervals.

    python -m eval.world_compare RUN_A RUN_B [--method encoder] [--photos 3] [--json OUT]

RUN_A and RUN_B are `python -m eval.world` work folders that rendered the same people and prompts (same
renderer seed, identities, prompts and sampling seeds) and ran `--method` with something changed between
them: another identity module, another `--id-scale`, ... Each run's own JSON pairs its method with text
only; this pairs the two runs with each other, identity by identity, so a person's difficulty cancels (the
interval of `paired` in eval.world). Both folders must hold every unit of the method for the same
identities; prompts that differ are refused, since then the pairing would compare different images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.world import HEADLINE, headline_values, paired, rendered_side, scored_people, side_path
from models.errors import UserError


def _side(run: Path) -> dict:
    side = rendered_side(run)
    if side is None:
        raise UserError(f"{side_path(run)} is missing: {run} is not a complete eval.world work folder",
                        hint="a folder that came back without its data/ gets it from a run of the same --seed and "
                             "--identities (the renderer is deterministic), or from rerunning eval.world there")
    return {"seed": side["seed"], "split": side["split"], "people": [p["identity"] for p in side["people"]]}


def compare(run_a: Path, run_b: Path, method: str = "encoder", photos: int = 3) -> dict:
    """{"identities", "a", "b", "b - a": {metric: interval}} over the identities both runs scored."""
    if _side(run_a) != _side(run_b):
        raise UserError(f"{run_a} and {run_b} rendered different people (renderer seed, split or identities "
                        "differ): there is nothing to pair")
    people_a, seeds_a = scored_people(run_a, method, photos)
    people_b, seeds_b = scored_people(run_b, method, photos)
    if seeds_a != seeds_b or [p.name for p in people_a] != [p.name for p in people_b]:
        raise UserError(f"{run_a} and {run_b} scored different units of {method} ({len(people_a)} and "
                        f"{len(people_b)} identities, {seeds_a} and {seeds_b} sampling seeds); finish both runs")
    for p in people_a:
        prompts = [json.loads((run / "prompts" / f"{p.name}.json").read_text()) for run in (run_a, run_b)]
        if prompts[0] != prompts[1]:
            raise UserError(f"{p.name}: the two runs prompted differently (--prompts or --seeds differ)")
    a = headline_values(run_a, method, photos, people_a, seeds_a)
    b = headline_values(run_b, method, photos, people_b, seeds_b)
    mean = {side: {m: (sum(v.values()) / len(v) if v else None) for m, v in vals.items()}
            for side, vals in (("a", a), ("b", b))}
    return {"identities": len(people_a), "sampling_seeds": seeds_a, **mean, "b - a": paired(b, a)}


def main(argv: list[str] | None = None) -> int:
    from eval.bench.common import environment
    from models.atomic import write_json_atomic

    p = argparse.ArgumentParser(prog="python -m eval.world_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path, help="eval.world work folder A")
    p.add_argument("run_b", type=Path, help="eval.world work folder B (the change)")
    p.add_argument("--method", default="encoder", help="the method both ran (default encoder)")
    p.add_argument("--photos", type=int, default=3, help="photo count (default 3)")
    p.add_argument("--json", type=Path, default=None, help="write the comparison here (atomically)")
    args = p.parse_args(argv)
    cmp = compare(args.run_a, args.run_b, args.method, args.photos)
    result = {"a": str(args.run_a), "b": str(args.run_b), "method": args.method, "photos": args.photos,
              "identities": cmp["identities"], "sampling_seeds": cmp["sampling_seeds"],
              "means": {"a": cmp["a"], "b": cmp["b"]}, "b - a": cmp["b - a"]}
    print(f"{args.method}, {result['identities']} identities, {args.photos} photos: B - A [95 %]")
    for metric in HEADLINE:
        d = result["b - a"][metric]
        if d["mean"] is not None:
            print(f"  {metric:<26} A {cmp['a'][metric]:+.3f}  B {cmp['b'][metric]:+.3f}  "
                  f"B - A {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
    if args.json:
        write_json_atomic(args.json, {**result, **environment("faceworld")}, indent=1)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
