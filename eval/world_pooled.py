"""python -m eval.world_pooled: paired differences pooled over several `python -m eval.world` work folders.

    python -m eval.world_pooled runs/eval_world/seed777 runs/eval_world/seed2027 [--photos 3] [--seeds 1]
        [--methods encoder,text_only] [--json PATH]

Each folder holds one evaluation (its own renderer seed, so its own people). The per-identity differences
(first method minus second, each identity's mean over its sampling seeds, headline layouts as in eval.world)
of every folder are pooled into one bootstrap interval over all identities: several small evaluations on
seeds nobody tuned on read as one larger one. The folders must have been run with the same settings for
the pooled number to mean anything: the units' keys (images per prompt, steps, guidance, references,
identity settings, prompts per identity) must agree across folders, else it stops and names them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from eval.world import Person, headline_values, paired, provenance, unit_settings


def people_of(folder: Path, method: str, k: int) -> list[Person]:
    """The identities with scored units of `method` at photo count k (names from the unit files)."""
    names = sorted({u.stem for u in (folder / "scores" / method / f"p{k}").glob("s*/*.json")})
    return [Person(name=n, identity=-1, class_word="") for n in names]


def folder_settings(folder: Path, methods: tuple[str, ...], k: int) -> dict:
    """{method: the distinct settings (eval.world.unit_settings) its units at photo count k were scored with}."""
    import json

    out = {}
    for method in methods:
        seen = {json.dumps(unit_settings(json.loads(unit.read_text())["key"]), sort_keys=True)
                for unit in (folder / "scores" / method / f"p{k}").glob("s*/*.json")}
        out[method] = [json.loads(x) for x in sorted(seen)]
    return out


def pooled(folders: list[Path], k: int, seeds: int, a: str = "encoder", b: str = "text_only") -> dict:
    """{metric: bootstrap interval of a - b over the identities of every folder}."""
    values = {a: {}, b: {}}
    for i, folder in enumerate(folders):
        people = people_of(folder, a, k)
        for method in (a, b):
            for metric, by_name in headline_values(folder, method, k, people, seeds).items():
                values[method].setdefault(metric, {}).update({f"{i}/{n}": v for n, v in by_name.items()})
    return paired(values[a], values[b])


def main(argv: list[str] | None = None) -> int:
    from models.atomic import write_json_atomic
    from models.errors import UserError

    p = argparse.ArgumentParser(prog="python -m eval.world_pooled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="eval.world work folders")
    p.add_argument("--photos", type=int, default=3, help="photo count (default 3)")
    p.add_argument("--seeds", type=int, default=1, help="sampling seeds of each evaluation (default 1)")
    p.add_argument("--methods", default="encoder,text_only", help="a,b: reports a minus b (default encoder,text_only)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(methods) != 2:
        raise UserError(f"--methods takes two methods, a,b (got {args.methods!r})")
    missing = [str(f) for f in args.folders if not people_of(f, methods[0], args.photos)]
    if missing:
        raise UserError(f"no {methods[0]} scores at {args.photos} photos in: {', '.join(missing)}",
                        hint="pass eval.world work folders (--out of python -m eval.world)")
    settings = [folder_settings(f, tuple(methods), args.photos) for f in args.folders]
    if any(s != settings[0] for s in settings) or any(len(v) != 1 for v in settings[0].values()):
        raise UserError("the folders' units were scored with different settings: "
                        + "; ".join(f"{f}: {s}" for f, s in zip(args.folders, settings)),
                        hint="pool only evaluations run with the same eval.world options (bar --seed and --identities)")
    result = {"format": "synthworld-pooled", "version": 1, "pair": f"{methods[0]} - {methods[1]}",
              "folders": [str(f) for f in args.folders], "photos": args.photos, "settings": settings[0],
              "paired": pooled(args.folders, args.photos, args.seeds, *methods),
              "command": shlex.join(["python", "-m", "eval.world_pooled", *(sys.argv[1:] if argv is None else argv)]),
              **provenance()}
    for metric, iv in result["paired"].items():
        if iv["mean"] is not None:
            print(f"{metric:>26}  {iv['mean']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}]  n={iv['n']}")
    if args.json:
        write_json_atomic(args.json, result, indent=1)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
