#!/usr/bin/env bash
# Personalise every identity under train_data/ (one folder of photos each; a folder named eval_prompts is
# not one) into identities/<name>.
# Environment: TRAIN_DATA (default train_data), IDENTITIES (default identities), extra train.py
# options as arguments (e.g. --refine-steps 20).
# A failing identity does not stop the others: the end prints a table of every identity and its
# result, and the exit status is 1 if any failed (2 when there is nothing to do).
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN_DATA=${TRAIN_DATA:-train_data}
IDENTITIES=${IDENTITIES:-identities}
PY=${PY:-.venv/bin/python}
[ -d "$TRAIN_DATA" ] || { echo "error: no $TRAIN_DATA/ folder (one sub-folder of photos per person)" >&2; exit 2; }
# train.py runs as its own process per identity (what `accelerate launch --num_processes 1` would
# start too); its errors are one line, so they go into the table as they are.
source scripts/batch_table.sh
BATCH_TITLE=identity
for dir in "$TRAIN_DATA"/*/; do
  [ -d "$dir" ] || continue  # no match: the glob stays literal
  name=$(basename "$dir")
  # the renderer's folders (python -m data_prep.faceworld render) keep their prompt files beside the photos
  [ "$name" != eval_prompts ] || continue
  echo "== $name"
  batch_run "$name" 'photos used' "$PY" train.py -d "$dir" -o "$IDENTITIES/$name" "$@" || true
done
[ "${#BATCH_NAMES[@]}" -gt 0 ] || { echo "error: $TRAIN_DATA/ has no identity folders" >&2; exit 2; }
batch_table
n_ok=$(( ${#BATCH_NAMES[@]} - BATCH_FAILED ))
echo "personalised $n_ok of ${#BATCH_NAMES[@]} identities into $IDENTITIES/"
[ "$BATCH_FAILED" -eq 0 ] || exit 1
