#!/usr/bin/env bash
# Personalise every identity under train_data/ (one folder of photos each) into identities/<name>.
# Environment: TRAIN_DATA (default train_data), IDENTITIES (default identities), extra train.py
# options as arguments (e.g. --refine-steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN_DATA=${TRAIN_DATA:-train_data}
IDENTITIES=${IDENTITIES:-identities}
PY=${PY:-.venv/bin/python}
[ -d "$TRAIN_DATA" ] || { echo "error: no $TRAIN_DATA/ folder (one sub-folder of photos per person)" >&2; exit 2; }
if [ -x .venv/bin/accelerate ]; then
  launch=(.venv/bin/accelerate launch --mixed_precision fp16 --num_processes 1 --num_machines 1 --dynamo_backend no)
else
  launch=("$PY")
fi
n=0
for dir in "$TRAIN_DATA"/*/; do
  [ -d "$dir" ] || continue  # no match: the glob stays literal
  name=$(basename "$dir")
  echo "== $name"
  "${launch[@]}" train.py -d "$dir" -o "$IDENTITIES/$name" "$@"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "error: $TRAIN_DATA/ has no identity folders" >&2; exit 2; }
echo "personalised $n identities into $IDENTITIES/"
