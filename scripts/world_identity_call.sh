#!/usr/bin/env bash
# One time-limited GPU call that trains identity-module variants on the committed world, side by side
# (each its own pretrain.train process on the one GPU), resumable across calls.
#   bash scripts/world_identity_call.sh CALL_SECONDS "NAME:FLAGS" ["NAME:FLAGS" ...]
# e.g. bash scripts/world_identity_call.sh 570 "base:" "face4:--face_loss_weight 4"
# First the shards (IDS training identities x PHOTOS renders, pretrain.world's identity stage with
# --steps 0; skipped when present), then every variant: pretrain/configs/world.json on those shards with
# the world as weights, --max_steps STEPS (the same in every call: the LR schedule spans the calls) and
# the variant's flags, stopped CALL_SECONDS after the start (it resumes from its last checkpoint, every
# 500 steps). A finished variant's module is in runs/v_NAME/faceid_encoder/, and its EMA module every
# EXPORT_EVERY steps (default 1000) in runs/v_NAME/exports/step_<n>/, to be chosen between by sampling.
# State travels between calls in <= 15 MiB pieces: written to $OUT/ident.tgz.*, read back from
# ${STATE:-.gpu_ops/state}/ident.tgz.* (shards excluded: regenerated when missing).
# Environment: IDS (default 16000), PHOTOS (4), STEPS (5000), BASE (/tmp/wi), WORLD (checkpoints/world).
set -u
CALL=${1:?call seconds}; shift
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUTD=${OUT:-/tmp/out}; L=$OUTD/logs; mkdir -p "$L"
B=${BASE:-/tmp/wi}; W=${WORLD:-checkpoints/world}; mkdir -p "$B"
source scripts/gpu_state.sh; restore_state ident "$B"
timeout -s INT $(( CALL - 40 )) python3 - "$B" "${IDS:-16000}" "${PHOTOS:-4}" "$W" <<'PY' > "$L/shards.log" 2>&1
import sys, dataclasses, torch
from pathlib import Path
from pretrain.world.common import StageOptions
from pretrain.world import identity as I
b, ids, photos, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
stage = I.IdentityStage(StageOptions(out=Path(b) / "runs", world=world, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                                     max_steps=0))
stage.c = dataclasses.replace(stage.c, identities=ids, photos=photos)
print(stage.run(), flush=True)
PY
echo "[$(el) s] shards (skipped when complete): $(tail -1 "$L/shards.log")"
pids=(); names=()
[ $(( CALL - $(el) - 60 )) -lt 30 ] && { echo "[$(el) s] no time left for training this call"; set --; }
for spec in "$@"; do
  name=${spec%%:*}; flags=${spec#*:}
  # shellcheck disable=SC2086
  timeout --preserve-status -s INT $(( CALL - $(el) - 60 )) \
    python3 -m pretrain.train --config pretrain/configs/world.json \
    --shards "$B/runs/identity/shards" --weights "$W" --output_dir "$B/runs/v_$name" --max_steps "${STEPS:-5000}" \
    --checkpoint_every 500 --keep_checkpoints 1 --export_every "${EXPORT_EVERY:-1000}" $flags > "$L/v_$name.log" 2>&1 &
  pids+=($!); names+=("$name")
  echo "[$(el) s] variant $name: $flags"
done
# how each ended: 0 finished, 130 stopped by the timeout's SIGINT with a checkpoint (pretrain.train's Ctrl-C),
# anything else without one (its steps since the last periodic checkpoint are lost; see its log's end)
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  case $rc in 0) how="finished" ;; 130) how="stopped with a checkpoint" ;;
    *) how="ended WITHOUT a checkpoint (exit $rc): it resumes from its last periodic one" ;; esac
  echo "[$(el) s] variant ${names[$i]}: $how"
done
echo "[$(el) s] variants returned"
for spec in "$@"; do name=${spec%%:*}; tail -2 "$L/v_$name.log"; ls "$B/runs/v_$name" 2>/dev/null; done
pack_state ident "$B" "$OUTD" --exclude=runs/identity/shards runs
tar czf "$OUTD/ident_logs.tgz" -C "$OUTD" logs; rm -rf "$L"
ls -la "$OUTD"; echo "[$(el) s] done"
