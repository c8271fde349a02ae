#!/usr/bin/env bash
# Reproduce the identity world: every registered stage of `python -m pretrain.world` in order, each
# resumable (rerun this script after a time-limited call to continue where it stopped).
#   bash scripts/world.sh [--tiny] [--minutes M] [--device cuda] [--seed S]
# Arguments go to every stage. A stage that stops before its total (a --minutes or --steps budget) stops the
# script with exit status 75: rerun it to continue; the next stage starts only from a finished one.
# WORLD_CALL_MINUTES=M bounds one call of the script: each stage gets the minutes left of M (--minutes; start-up
# and export come on top, so leave a margin in a time-limited call), and no stage starts with less than one left.
# To go on on another machine: `python -m pretrain.world pack --out $WORLD_OUT --world $WORLD_DIR --to DIR` writes
# what a rerun needs in pieces under 15 MiB; `cat DIR/world_state.tar.* | tar -x` there, from the same folder.
# Environment: WORLD_OUT (runs/world), WORLD_DIR (checkpoints/world),
# PYTHON (.venv/bin/python when present), WORLD_<STAGE>_ARGS (added to that stage only, the stage's name
# in capitals: WORLD_BACKBONE_ARGS="--compile --render-workers 14 --batch-reuse 3" for the backbone's speed
# flags on a 16-core GPU host, WORLD_CLIP_ARGS="--hard-negatives"), WORLD_RECIPE (a file of such variables, sourced
# first; what is already set wins), WORLD_SIDE_BY_SIDE (stages that run at the same time, as separate processes, when
# the first of them comes: "faces face_detector eval_faces attributes", the four small models that read renders and
# none of each other's exports; they must be next to each other in the stage order). The autoencoder stage runs
# only when WORLD_BACKBONE_ARGS has "--space autoencoder" (the backbone in its latent instead of the pixel space).
# Without a recipe the stages' defaults make a pixel-space world on faceworld-2. scripts/world_hour.env is the
# committed world's recipe from scratch (faceworld-3, the 2x autoencoder's latent, the face weighed; the backbone's
# learning rate raised) with its totals sized to about an hour of one H100. The committed world itself was not made
# by one run of this script but by continued time-limited calls (checkpoints/world/README.md): a latent backbone
# trained on faceworld-2, continued on faceworld-3 with the face weighed to 77,974 steps, with the models that read
# renders and the identity module trained on faceworld-3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WORLD_RECIPE:-}" ]; then
    [ -f "$WORLD_RECIPE" ] || { echo "world.sh: WORLD_RECIPE=$WORLD_RECIPE is not a file" >&2; exit 2; }
    # shellcheck disable=SC1090
    source "$WORLD_RECIPE"
    echo "== world recipe: $WORLD_RECIPE"
fi
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${WORLD_OUT:-runs/world}"
WORLD="${WORLD_DIR:-checkpoints/world}"
listed=$("$PYTHON" -m pretrain.world list)
mapfile -t stages <<< "$listed"
read -r -a side <<< "${WORLD_SIDE_BY_SIDE:-}"
if [ ${#side[@]} -gt 0 ] && [[ " ${stages[*]} " != *" ${side[*]} "* ]]; then
    echo "world.sh: WORLD_SIDE_BY_SIDE=\"${side[*]}\" must name stages next to each other in their order:" \
         "${stages[*]}" >&2
    exit 2
fi

skipped() {  # the autoencoder, unless the backbone trains in its latent
    [ "$1" = autoencoder ] && [[ " ${WORLD_BACKBONE_ARGS:-} " != *" --space autoencoder "* ]]
}

stage_command() {  # STAGE ARGS... -> cmd: its train command; the stage's WORLD_<STAGE>_ARGS and the budget come last
    local var="WORLD_${1^^}_ARGS" extra
    read -r -a extra <<< "${!var:-}"
    cmd=("$PYTHON" -m pretrain.world train "$1" --out "$OUT" --world "$WORLD" "${@:2}" "${extra[@]}" "${budget[@]}")
}

for stage in "${stages[@]}"; do
    if skipped "$stage"; then
        echo "== world stage skipped: autoencoder (the backbone trains in the pixel space; give" \
             "WORLD_BACKBONE_ARGS=\"--space autoencoder\" to train it in the autoencoder's latent)"
        continue
    fi
    group=("$stage")
    if [[ " ${side[*]} " == *" $stage "* ]]; then
        group=()
        for s in "${side[@]}"; do skipped "$s" || group+=("$s"); done
        [ "$stage" = "${group[0]}" ] || continue  # it ran beside the first of them that trains
    fi
    budget=()
    if [ -n "${WORLD_CALL_MINUTES:-}" ]; then
        left=$(awk -v m="$WORLD_CALL_MINUTES" -v s="$SECONDS" 'BEGIN { printf "%.2f", m - s / 60 }')
        if awk -v l="$left" 'BEGIN { exit !(l < 1) }'; then
            echo "== world: this call's $WORLD_CALL_MINUTES minutes are spent before stage $stage; rerun" \
                 "scripts/world.sh to continue"
            exit 75
        fi
        budget=(--minutes "$left")
    fi
    if [ ${#group[@]} -eq 1 ]; then
        echo "== world stage: $stage${budget:+ (at most ${budget[1]} minutes of training)}"
        stage_command "$stage" "$@"
        "${cmd[@]}"
    else
        pids=()
        # a stop of this script stops them too (started in the background, they would ignore an interrupt)
        trap 'kill "${pids[@]}" 2> /dev/null; exit 130' INT
        trap 'kill "${pids[@]}" 2> /dev/null; exit 143' TERM
        for s in "${group[@]}"; do
            echo "== world stage: $s (side by side with the others of: ${group[*]})${budget:+ (at most" \
                 "${budget[1]} minutes of training)}"
            stage_command "$s" "$@"
            "${cmd[@]}" &  # a command, not a function, in the background: $! is the stage's own process
            pids+=($!)
        done
        failed=0
        for pid in "${pids[@]}"; do wait "$pid" || failed=$?; done  # every one ends (and saves) before a stop
        trap - INT TERM
        if [ "$failed" -ne 0 ]; then
            echo "world.sh: a stage of \"${group[*]}\" failed with exit status $failed (its lines above)" >&2
            exit "$failed"
        fi
    fi
    for s in "${group[@]}"; do
        if ! "$PYTHON" -m pretrain.world finished "$s" --out "$OUT" --world "$WORLD" > /dev/null; then
            echo "== world stage $s stopped before its total; rerun scripts/world.sh to continue (after" \
                 "$(( SECONDS / 60 )) min $(( SECONDS % 60 )) s)"
            exit 75
        fi
    done
done
echo "== world done: every stage finished and exported to $WORLD (this call: $(( SECONDS / 60 )) min" \
     "$(( SECONDS % 60 )) s)"
