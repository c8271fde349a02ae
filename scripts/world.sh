#!/usr/bin/env bash
# Reproduce the identity world: every registered stage of `python -m pretrain.world` in order, each
# resumable (rerun this script after a time-limited call to continue where it stopped).
#   bash scripts/world.sh [--tiny] [--minutes M] [--device cuda] [--seed S]
# Environment: WORLD_OUT (runs/world), WORLD_DIR (checkpoints/world), PYTHON (.venv/bin/python when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${WORLD_OUT:-runs/world}"
WORLD="${WORLD_DIR:-checkpoints/world}"
for stage in $("$PYTHON" -m pretrain.world list); do
    echo "== world stage: $stage"
    "$PYTHON" -m pretrain.world train "$stage" --out "$OUT" --world "$WORLD" "$@"
done
