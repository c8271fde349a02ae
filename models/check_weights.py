"""Check, before any work, that every weight file a workflow needs is present.

    python -m models.check_weights [--weights DIR] [NAME ...]      (names: models.paths.KNOWN_WEIGHTS)

Exits 2 listing every missing file with where to get it; 0 when all are found.
"""

from __future__ import annotations

from .errors import run_cli
from .paths import ENV_VAR, KNOWN_WEIGHTS, missing_weights, weights_dir


def main(argv=None) -> int:
    """Print what is missing; exit 2 if anything is."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m models.check_weights", description=main.__doc__)
    p.add_argument("names", nargs="*", default=list(KNOWN_WEIGHTS), help=f"any of {sorted(KNOWN_WEIGHTS)}")
    p.add_argument("--weights", default=None, help=f"weights folder (default ${ENV_VAR} or checkpoints/)")
    args = p.parse_args(argv)
    missing = missing_weights(args.names, args.weights)
    for message in missing:
        print(f"missing: {message}")
    if missing:
        print(f"{len(missing)} of {len(args.names)} weight files are missing; see checkpoints/README.md")
        return 2
    print(f"all {len(args.names)} weight files found under {weights_dir(args.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
