#!/usr/bin/env bash
# One time-limited GPU call that continues the world's backbone in several arms side by side (each its own
# pretrain.world backbone process on the one GPU, each from the same backbone), then evaluates every arm.
#   bash scripts/world_backbone_arms_call.sh CALL_SECONDS "NAME:FLAGS" ["NAME:FLAGS" ...]
# e.g. bash scripts/world_backbone_arms_call.sh 570 "gains:--level-gains 1,1,0.8,0.5,0.3" \
#          "gains_face4:--level-gains 1,1,0.8,0.5,0.3 --face-weight 4"
# Each arm: a copy of WORLD in $BASE/NAME/w, `train backbone --init-from WORLD's UViT` for STEPS steps with the
# arm's flags (stopped in time for the evaluations), then `evaluate` of text_to_image and frechet on every
# renderer seed of EVAL_SEEDS, backbone_attributes (CLASSIFY renders) and single_attribute (12 images a prompt)
# on the first; each evaluation is stopped in time for the packing, the first seed's first. What comes back in
# $OUT: NAME_uvit_v1.safetensors (the arm's exported backbone, fp16, one file under 16 MiB) and arms.tgz (every
# JSON and log). The arms share the GPU and the CPUs: render processes are split between them (RENDER_WORKERS
# in all).
# Environment: STEPS (default 3400), BASE (/tmp/arms), WORLD (checkpoints/world), EVAL_SEEDS ("31337 27182"),
# CLASSIFY (500), RENDER_WORKERS (14), BATCH_REUSE (4), EVAL_SECONDS (the time kept for the evaluations,
# 150), TRAIN_ARGS (every arm's training flags before its own, default --compile; "--tiny --device cpu" for a
# CPU dry run on a tiny world), EVAL_ARGS (added to every evaluation: "--tiny --device cpu" likewise),
# PYTHON (an interpreter with the project's packages: then the carried wheels are not installed).
set -u
CALL=${1:?call seconds}; shift
[ $# -ge 1 ] || { echo "error: name at least one arm, as NAME:FLAGS (FLAGS may be empty)" >&2; exit 2; }
source "$(dirname "$0")/call_env.sh"  # T0, el, PY, OUTD, L; cd to the repository root
B=${BASE:-/tmp/arms}; W=${WORLD:-checkpoints/world}; SEEDS=${EVAL_SEEDS:-31337 27182}
UVIT=$W/models/uvit_v1.safetensors
[ -f "$UVIT" ] || { echo "error: $UVIT is missing: WORLD must be a world folder with a backbone" >&2; exit 2; }
left() { echo $(( CALL - $(el) - 20 )); }  # seconds an evaluation may still take (20 s kept for packing)
run_eval() {  # an evaluation, stopped in time for the packing; skipped when no time is left
  [ "$(left)" -ge 10 ] || { echo "no time left for: $*"; return 1; }
  # shellcheck disable=SC2086
  timeout -s INT "$(left)" "$PY" -m pretrain.world evaluate "$@" ${EVAL_ARGS:-}
}
workers=$(( ${RENDER_WORKERS:-14} / $# ))
budget=$(( CALL - ${EVAL_SECONDS:-150} - 30 ))
pids=()
for spec in "$@"; do
  name=${spec%%:*}; flags=${spec#*:}
  rm -rf "${B:?}/$name"; mkdir -p "$B/$name"; cp -r "$W" "$B/$name/w"
  # shellcheck disable=SC2086
  timeout -s INT "$budget" "$PY" -m pretrain.world train backbone --out "$B/$name/runs" --world "$B/$name/w" \
    --init-from "$UVIT" --total-steps "${STEPS:-3400}" --render-workers "$workers" \
    --batch-reuse "${BATCH_REUSE:-4}" --log-every 250 ${TRAIN_ARGS---compile} $flags > "$L/${name}_backbone.log" 2>&1 &
  pids+=($!)
  echo "[$(el) s] arm $name: $flags ($workers render processes, at most $budget s)"
done
for p in "${pids[@]}"; do wait "$p" || true; done
echo "[$(el) s] training returned"
pids=()
for spec in "$@"; do
  name=${spec%%:*}; w=$B/$name/w; r=$L/$name
  if ! cmp -s "$w/models/uvit_v1.safetensors" "$UVIT"; then
    (
      first=1
      for s in $SEEDS; do
        run_eval --world "$w" --seed "$s" --only text_to_image,frechet --out "${r}_t2i_seed$s.json" || exit 1
        if [ $first = 1 ]; then  # the first seed's diagnostics before the other seeds (time may run short)
          run_eval --world "$w" --seed "$s" --only backbone_attributes --classify-renders "${CLASSIFY:-500}" \
            --out "${r}_backbone_attributes_seed$s.json" || exit 1
          run_eval --world "$w" --seed "$s" --only single_attribute --t2i-images 12 \
            --out "${r}_single_attribute_seed$s.json" || exit 1
          first=0
        fi
      done
    ) > "${r}_eval.log" 2>&1 &
    pids+=($!)
    cp "$w/models/uvit_v1.safetensors" "$OUTD/${name}_uvit_v1.safetensors"
    echo "[$(el) s] arm $name: exported; evaluating"
  else
    echo "[$(el) s] arm $name: no export (see logs/${name}_backbone.log)"
  fi
done
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || echo "[$(el) s] an evaluation failed (see its log)"; done
tar czf "$OUTD/arms.tgz" -C "$OUTD" logs && rm -rf "$L"
ls -la "$OUTD"; echo "[$(el) s] done"
