#!/usr/bin/env bash
# One time-limited GPU call that trains the world's backbone in an autoencoder's latent instead of the pixel
# space: the autoencoder stage (its step total set from a short probe of its rate), then `train backbone
# --space autoencoder` from scratch (its total set from the time left), then text-to-image and Frechet on one
# renderer seed. With FROM (a folder holding an earlier call's autoencoder/ and uvit_v1.safetensors) the
# autoencoder is reused and the backbone continues those weights instead.
#   bash scripts/world_latent_call.sh CALL_SECONDS
# What comes back in $OUT: autoencoder/ (config.json, model.safetensors), uvit_v1.safetensors (the backbone,
# fp16) and latent.tgz (logs, the reconstruction and sample grids, the evaluation JSON).
# Environment: WORLD (checkpoints/world: its world_clip/, attributes/ and face packs are used), BASE
# (/tmp/latent), AE_SECONDS (150), AE_MAX_STEPS (6000), BB_RATE (7000: backbone samples/s assumed when setting
# its total), EVAL_SECONDS (80: left for the evaluation at that rate), EVAL_SEED (31337), BB_ARGS and AE_ARGS (extra
# backbone and autoencoder flags, e.g. AE_ARGS="--batch-reuse 4 --face-weight 4"), PYTHON (an interpreter
# with the project's packages: then the carried wheels are not installed), TRAIN_ARGS (added to every stage
# and EVAL_ARGS to the evaluation: "--tiny --device cpu" for a CPU dry run).
set -u
CALL=${1:?call seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else source scripts/device_env.sh; PY=python3; fi
OUTD=${OUT:-/tmp/out}; L=$OUTD/logs; mkdir -p "$L"
B=${BASE:-/tmp/latent}; W=$B/world; R=$B/runs; SRC=${WORLD:-checkpoints/world}
rm -rf "$B"; mkdir -p "$W"
for d in world_clip attributes faces eval_faces; do [ -d "$SRC/$d" ] && cp -r "$SRC/$d" "$W/"; done
train() {  # a stage, stopped (without export) if it overruns its seconds
  local secs=$1; shift
  # shellcheck disable=SC2086
  timeout -s INT "$secs" "$PY" -m pretrain.world train "$@" --out "$R" --world "$W" ${TRAIN_ARGS:-}
}
if [ -n "${FROM:-}" ]; then
  cp -r "$FROM/autoencoder" "$W/autoencoder"
  INIT="--init-from $FROM/uvit_v1.safetensors"
  echo "[$(el) s] autoencoder from $FROM; the backbone continues $FROM/uvit_v1.safetensors"
else
  INIT=""
  # the autoencoder's rate from 40 steps of a throwaway run (its total fixes its schedule, so it is set first)
  # shellcheck disable=SC2086
  R=$B/probe train 90 autoencoder --render-workers 8 ${AE_ARGS:-} --total-steps 100000 --steps 40 --log-every 20 \
    > "$L/autoencoder_probe.log" 2>&1
  rate=$(grep -o '[0-9]* samples/s' "$L/autoencoder_probe.log" | tail -1 | cut -d' ' -f1)
  steps=$(( ${rate:-0} * ${AE_SECONDS:-150} / 256 )); [ "$steps" -gt "${AE_MAX_STEPS:-6000}" ] && steps=${AE_MAX_STEPS:-6000}
  [ "$steps" -ge 1 ] || { echo "the autoencoder probe gave no rate (logs/autoencoder_probe.log)"; steps=1000; }
  echo "[$(el) s] autoencoder: ${rate:-?} samples/s in the probe, $steps steps"
  # shellcheck disable=SC2086
  train $(( ${AE_SECONDS:-150} + 60 )) autoencoder --render-workers 8 ${AE_ARGS:-} --total-steps "$steps" --log-every 250 \
    > "$L/autoencoder.log" 2>&1
  cp "$R/autoencoder/reconstructions.png" "$L/" 2>/dev/null
fi
[ -f "$W/autoencoder/model.safetensors" ] || { echo "no autoencoder (logs/autoencoder.log)"; tar czf "$OUTD/latent.tgz" -C "$OUTD" logs; exit 1; }
mkdir -p "$OUTD/autoencoder"; cp "$W/autoencoder/config.json" "$W/autoencoder/model.safetensors" "$OUTD/autoencoder/"
# the total is sized to leave EVAL_SECONDS for the evaluation at BB_RATE; a slower run may take that time
# too (the export matters more: an evaluation can be run elsewhere), not the packing's
left=$(( CALL - $(el) - 25 ))
steps=$(( (left - ${EVAL_SECONDS:-80} - 60) * ${BB_RATE:-7000} / 512 ))  # 60 s: start-up, compilation, export
echo "[$(el) s] backbone: $steps steps, stopped after $left s"
# shellcheck disable=SC2086
train "$left" backbone --space autoencoder $INIT --compile --render-workers 14 --batch-reuse 3 --total-steps "$steps" \
  --log-every 250 ${BB_ARGS:-} > "$L/backbone.log" 2>&1
cp "$R/backbone/samples.png" "$L/" 2>/dev/null
if [ -f "$W/models/uvit_v1.safetensors" ]; then
  cp "$W/models/uvit_v1.safetensors" "$OUTD/"; cp "$W/model_configs.json" "$L/"
  # shellcheck disable=SC2086
  timeout -s INT $(( CALL - $(el) - 15 )) "$PY" -m pretrain.world evaluate --world "$W" --seed "${EVAL_SEED:-31337}" \
    --only text_to_image,frechet --out "$L/t2i_seed${EVAL_SEED:-31337}.json" ${EVAL_ARGS:-} > "$L/eval.log" 2>&1
  echo "[$(el) s] evaluated (logs/eval.log)"
else
  echo "[$(el) s] the backbone did not finish (logs/backbone.log)"
fi
tar czf "$OUTD/latent.tgz" -C "$OUTD" logs && rm -rf "$L"
ls -la "$OUTD"; echo "[$(el) s] done"
