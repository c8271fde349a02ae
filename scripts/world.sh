#!/usr/bin/env bash
# Reproduce the identity world: every registered stage of `python -m pretrain.world` in order, each
# resumable (rerun this script after a time-limited call to continue where it stopped).
#   bash scripts/world.sh [--tiny] [--minutes M] [--device cuda] [--seed S]
# Arguments go to every stage. Environment: WORLD_OUT (runs/world), WORLD_DIR (checkpoints/world),
# PYTHON (.venv/bin/python when present), WORLD_BACKBONE_ARGS (added to the backbone stage only: its
# speed flags, e.g. "--compile --render-workers 14 --batch-reuse 3" on a 16-core GPU host).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${WORLD_OUT:-runs/world}"
WORLD="${WORLD_DIR:-checkpoints/world}"
read -r -a backbone_args <<< "${WORLD_BACKBONE_ARGS:-}"
for stage in $("$PYTHON" -m pretrain.world list); do
    echo "== world stage: $stage"
    extra=()
    if [ "$stage" = backbone ]; then extra=("${backbone_args[@]}"); fi
    "$PYTHON" -m pretrain.world train "$stage" --out "$OUT" --world "$WORLD" "$@" "${extra[@]}"
done
