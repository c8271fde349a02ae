"""Export the EMA identity module of a training checkpoint, for a run that stopped before max_steps.

    python -m pretrain.export RUN_DIR/checkpoints/step_00003632 --like checkpoints/world/faceid_encoder \
        --out /tmp/faceid_encoder

Pretraining exports its EMA module itself when it reaches `max_steps` (pretrain.train). A run whose
last call ran out of time, or whose shards are gone, still has its checkpoints: this writes the same
folder from one of them. The module's architecture and face model come from `--like`, a module folder
of the same architecture and recogniser (a previous export of the same recipe): a checkpoint holds
weights and the training config, but not the face-model fingerprint, which pretraining reads from
its shards. The export records the checkpoint's step (`pretraining.step`, with `stopped_early`
when it is below the config's max_steps) and the run's last identity diagnostic (from the run's
log.json, when the checkpoint sits in <run>/checkpoints/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoder.identity import IdentityModule, read_metadata
from models.errors import UserError, run_cli
from pretrain.checkpoint import STATE_FILE, load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.logs import JsonLog
from pretrain.train import pretraining_record


def export(checkpoint: Path, like: Path, out: Path) -> Path:
    """Write the checkpoint's EMA module into `out` (identity.safetensors + config.json)."""
    saved = load_checkpoint(checkpoint)
    state, reference = saved["state"], read_metadata(like)
    module = IdentityModule.load(like)
    try:
        missing, unexpected = module.load_state_dict(saved["ema"], strict=False)
    except RuntimeError as e:  # a shape differs
        raise UserError(f"{checkpoint} does not match the architecture of {like}: {str(e).splitlines()[-1]}") from e
    if missing or unexpected:
        raise UserError(f"{checkpoint} does not match the architecture of {like} "
                        f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    config, step = PretrainConfig.from_dict(state["config"]), int(state["step"])
    log = checkpoint.parent.parent / "log.json"
    pretraining = {**pretraining_record(config, step, state.get("samples_seen")), "exported_from": str(checkpoint)}
    if step < config.max_steps:
        pretraining["stopped_early"] = f"step {step} of {config.max_steps}"
    extra = {"pretraining": pretraining,
             "identity_diagnostic": JsonLog(log, step).last("identity") if log.is_file() else None,
             "face_model": reference.get("face_model")}
    return module.save(out, extra=extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder (<run>/checkpoints/step_<n>)")
    p.add_argument("--like", type=Path, required=True,
                   help="an identity-module folder of the same architecture and face model")
    p.add_argument("--out", type=Path, required=True, help="folder to write (identity.safetensors, config.json)")
    args = p.parse_args(argv)
    if not (args.checkpoint / STATE_FILE).is_file():
        raise UserError(f"{args.checkpoint} is not a training checkpoint (no {STATE_FILE}); "
                        "give a <run>/checkpoints/step_<n> folder")
    out = export(args.checkpoint, args.like, args.out)
    meta = json.loads((out / "config.json").read_text())
    print(f"exported the EMA module of {args.checkpoint} ({meta['pretraining'].get('stopped_early', 'complete')}) "
          f"to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
