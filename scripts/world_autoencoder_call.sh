#!/usr/bin/env bash
# One time-limited GPU call that trains one or more world autoencoders side by side (they share the GPU, which
# limits the stage: N runs each go about 1/N as fast, so this saves start-ups and evaluations, not GPU time),
# each sized from a short probe of its rate, then measures each with `evaluate --only reconstruction` (what
# the classifier and the evaluation recogniser still find in test renders passed through it).
#   bash scripts/world_autoencoder_call.sh CALL_SECONDS
# AE_VARIANTS names the runs, "name:flags" separated by ";", e.g.
#   AE_VARIANTS="f4:;f2:--downsample 2;f4c8:--latent-channels 8" AE_ARGS="--batch-reuse 4 --face-weight 4"
# (default "ae:", the stage's config). What comes back in $OUT: <name>/config.json and <name>/model.safetensors
# (the export, fp16) for each run, and autoencoders.tgz (logs, reconstruction grids, evaluation JSONs).
# Environment: WORLD (checkpoints/world: its attributes/, faces/ and eval_faces/ are used), BASE
# (/tmp/autoencoders), AE_ARGS (flags for every run), AE_SECONDS (training seconds of each run; default: what
# the call leaves after EVAL_SECONDS), AE_MAX_STEPS (30000), RENDER_WORKERS (15 shared out between the runs),
# EVAL_SECONDS (60; 0 skips the evaluation), EVAL_SEED (31337), PYTHON (an interpreter with the project's
# packages: then the carried wheels are not installed), TRAIN_ARGS / EVAL_ARGS (added to every stage /
# evaluation: "--tiny --device cpu" for a CPU dry run).
set -u
CALL=${1:?call seconds}
source "$(dirname "$0")/call_env.sh"  # T0, el, PY, OUTD, L; cd to the repository root
B=${BASE:-/tmp/autoencoders}; SRC=${WORLD:-checkpoints/world}
IFS=';' read -ra VARIANTS <<< "${AE_VARIANTS:-ae:}"
RW=${RENDER_WORKERS:-$(( 15 / ${#VARIANTS[@]} ))}; [ "$RW" -ge 1 ] || RW=1
EVAL=${EVAL_SECONDS:-60}
rm -rf "$B"; mkdir -p "$B"

variant() {  # name flags: probe, train, export, evaluate one run (its lines go to logs/<name>.log)
  local name=$1 flags=$2 W=$B/$1/world R=$B/$1/runs
  mkdir -p "$W"
  for d in attributes faces eval_faces; do [ -d "$SRC/$d" ] && cp -r "$SRC/$d" "$W/"; done
  # the rate from 40 steps of a throwaway run (the total fixes the LR schedule, so it is set first)
  # shellcheck disable=SC2086
  timeout -s INT 120 "$PY" -m pretrain.world train autoencoder --out "$B/$name/probe" --world "$B/$name/probe_world" \
    --render-workers "$RW" ${AE_ARGS:-} $flags --total-steps 100000 --steps 40 --log-every 20 ${TRAIN_ARGS:-} \
    > "$L/${name}_probe.log" 2>&1
  local rate secs steps
  rate=$(grep -o '[0-9]* samples/s' "$L/${name}_probe.log" | tail -1 | cut -d' ' -f1)
  secs=${AE_SECONDS:-$(( CALL - $(el) - EVAL - 60 ))}  # 60 s: start-up, export, packing
  steps=$(( ${rate:-0} * secs * 3 / 4 / 256 ))  # runs side by side slow each other more than their probes show
  [ "$steps" -ge 1 ] || { echo "the probe gave no usable rate (logs/${name}_probe.log): 1000 steps"; steps=1000; }
  [ "$steps" -gt "${AE_MAX_STEPS:-30000}" ] && steps=${AE_MAX_STEPS:-30000}
  echo "[$(el) s] $name ($flags): ${rate:-?} samples/s in the probe; $steps steps in about $secs s"
  # shellcheck disable=SC2086
  timeout -s INT $(( CALL - $(el) - EVAL - 20 )) "$PY" -m pretrain.world train autoencoder --out "$R" --world "$W" \
    --render-workers "$RW" ${AE_ARGS:-} $flags --total-steps "$steps" --log-every 500 ${TRAIN_ARGS:-} \
    > "$L/${name}_train.log" 2>&1
  cp "$R/autoencoder/reconstructions.png" "$L/${name}_reconstructions.png" 2>/dev/null
  [ -f "$W/autoencoder/model.safetensors" ] || { echo "[$(el) s] $name: no export (logs/${name}_train.log)"; return 1; }
  mkdir -p "$OUTD/$name"; cp "$W/autoencoder/config.json" "$W/autoencoder/model.safetensors" "$OUTD/$name/"
  echo "[$(el) s] $name exported"
  [ "$EVAL" -gt 0 ] || return 0
  # shellcheck disable=SC2086
  timeout -s INT $(( CALL - $(el) - 15 )) "$PY" -m pretrain.world evaluate --world "$W" --seed "${EVAL_SEED:-31337}" \
    --only reconstruction --out "$L/reconstruction_${name}_seed${EVAL_SEED:-31337}.json" ${EVAL_ARGS:-} \
    > "$L/${name}_eval.log" 2>&1
  echo "[$(el) s] $name evaluated (logs/${name}_eval.log)"
}

for v in "${VARIANTS[@]}"; do
  variant "${v%%:*}" "${v#*:}" > "$L/${v%%:*}.log" 2>&1 &
done
wait
for v in "${VARIANTS[@]}"; do cat "$L/${v%%:*}.log"; done
tar czf "$OUTD/autoencoders.tgz" -C "$OUTD" logs && rm -rf "$L"
ls -la "$OUTD"; echo "[$(el) s] done"
