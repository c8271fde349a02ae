#!/usr/bin/env bash
# One time-limited GPU call that trains the world's backbone in an autoencoder's latent instead of the pixel
# space: the autoencoder stage (scripts/world_autoencoder_call.sh: one run sized from a probe of its rate),
# then `train backbone --space autoencoder` from scratch (its total set from the time left), then text-to-image
# and Frechet on one renderer seed. With FROM (a folder holding an earlier call's autoencoder/ and
# uvit_v1.safetensors) the autoencoder is reused and the backbone continues those weights instead. A chain of
# calls carries the last call's files as FROM (an ignored folder such as .gpu_ops/from, named in the device
# call's carry); with the wheels they leave no room for the committed backbone, so move
# checkpoints/world/models/uvit_v1.safetensors out of the working tree for such a call (it is not used).
#   bash scripts/world_latent_call.sh CALL_SECONDS
# What comes back in $OUT: autoencoder/ (config.json, model.safetensors), uvit_v1.safetensors (the backbone,
# fp16) and latent.tgz (logs, the reconstruction and sample grids, the evaluation JSON).
# Environment: WORLD (checkpoints/world: its world_clip/, attributes/ and face packs are used), BASE
# (/tmp/latent), AE_SECONDS (150), AE_MAX_STEPS (6000), BB_RATE (7000: backbone samples/s assumed when setting
# its total), AE_FROM (a folder holding an autoencoder export, config.json and model.safetensors: used instead of
# training one; the backbone starts from scratch), EVAL_SECONDS (80: left for the evaluation at that rate),
# EVAL_SEED (31337), EVAL_ONLY (the evaluation's sections; text_to_image,frechet), BB_ARGS and AE_ARGS (extra
# backbone and autoencoder flags, e.g. AE_ARGS="--batch-reuse 4 --face-weight 4"), PYTHON (an interpreter with
# the project's packages: then the carried wheels are not installed), TRAIN_ARGS (added to every stage and
# EVAL_ARGS to the evaluation: "--tiny --device cpu" for a CPU dry run).
set -u
CALL=${1:?call seconds}
source "$(dirname "$0")/call_env.sh"  # T0, el, PY, OUTD, L; cd to the repository root
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
elif [ -n "${AE_FROM:-}" ]; then
  mkdir -p "$W/autoencoder"; cp "$AE_FROM/config.json" "$AE_FROM/model.safetensors" "$W/autoencoder/"
  INIT=""
  echo "[$(el) s] autoencoder from $AE_FROM; the backbone starts from scratch"
else
  INIT=""
  # one run of scripts/world_autoencoder_call.sh, without its evaluation (its logs join this call's)
  PYTHON=$PY OUT=$B/ae_out BASE=$B/ae AE_VARIANTS="ae:" AE_SECONDS=${AE_SECONDS:-150} \
    AE_MAX_STEPS=${AE_MAX_STEPS:-6000} RENDER_WORKERS=8 EVAL_SECONDS=0 \
    bash scripts/world_autoencoder_call.sh $(( ${AE_SECONDS:-150} + 200 )) > "$L/autoencoder_call.log" 2>&1
  tar xzf "$B/ae_out/autoencoders.tgz" -C "$B/ae_out" && cp "$B"/ae_out/logs/* "$L/"
  mkdir -p "$W/autoencoder"; cp "$B"/ae_out/ae/* "$W/autoencoder/" 2>/dev/null
  grep -h "samples/s in the probe" "$L/autoencoder_call.log"
fi
[ -f "$W/autoencoder/model.safetensors" ] || {
  echo "no autoencoder (logs/autoencoder_call.log, logs/ae_train.log)"
  tar czf "$OUTD/latent.tgz" -C "$OUTD" logs; exit 1; }
mkdir -p "$OUTD/autoencoder"; cp "$W/autoencoder/config.json" "$W/autoencoder/model.safetensors" "$OUTD/autoencoder/"
# the total is sized to leave EVAL_SECONDS for the evaluation at BB_RATE. A slower run stops itself short of it
# when only the evaluation's time and its export's are left (--minutes), and exports what it trained
# (--export-when-stopped; a rerun on a warm machine would resume its checkpoint); the timeout only guards the
# packing's seconds
left=$(( CALL - $(el) - 25 ))
steps=$(( (left - ${EVAL_SECONDS:-80} - 60) * ${BB_RATE:-7000} / 512 ))  # 60 s: start-up, compilation, export
minutes=$(awk "BEGIN { print ($left - ${EVAL_SECONDS:-80} - 30) / 60 }")  # the loop's budget: start-up and export
echo "[$(el) s] backbone: $steps steps, stopped after $minutes min of training"
# shellcheck disable=SC2086
train "$left" backbone --space autoencoder $INIT --compile --render-workers 14 --batch-reuse 3 --total-steps "$steps" \
  --minutes "$minutes" --export-when-stopped --log-every 250 ${BB_ARGS:-} > "$L/backbone.log" 2>&1
grep -h "stopped at step" "$L/backbone.log" | tail -1
cp "$R/backbone/samples.png" "$L/" 2>/dev/null
if [ -f "$W/models/uvit_v1.safetensors" ]; then
  cp "$W/models/uvit_v1.safetensors" "$OUTD/"; cp "$W/model_configs.json" "$L/"
  # shellcheck disable=SC2086
  timeout -s INT $(( CALL - $(el) - 15 )) "$PY" -m pretrain.world evaluate --world "$W" --seed "${EVAL_SEED:-31337}" \
    --only "${EVAL_ONLY:-text_to_image,frechet}" --out "$L/t2i_seed${EVAL_SEED:-31337}.json" ${EVAL_ARGS:-} \
    > "$L/eval.log" 2>&1
  echo "[$(el) s] evaluated (logs/eval.log)"
else
  echo "[$(el) s] the backbone did not finish (logs/backbone.log)"
fi
tar czf "$OUTD/latent.tgz" -C "$OUTD" logs && rm -rf "$L"
ls -la "$OUTD"; echo "[$(el) s] done"
