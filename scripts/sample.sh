#!/usr/bin/env bash
# Generate every prompt file under eval_prompts/ with its identity:
#   <name>.json -> outputs/<name>;  <name>_sim.json / <name>_edit.json -> outputs/<name>_sim / _edit
# Environment: EVAL_PROMPTS (default eval_prompts), IDENTITIES (identities), OUTPUTS (outputs);
# extra sample.py options as arguments.
# A failing prompt file (e.g. its identity is missing) does not stop the others: the end prints a
# table of every prompt file and its result, and the exit status is 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL_PROMPTS=${EVAL_PROMPTS:-eval_prompts}
IDENTITIES=${IDENTITIES:-identities}
OUTPUTS=${OUTPUTS:-outputs}
PY=${PY:-.venv/bin/python}
[ -d "$EVAL_PROMPTS" ] || { echo "error: no $EVAL_PROMPTS/ folder of <name>.json prompt files" >&2; exit 2; }
source scripts/batch_table.sh
BATCH_TITLE="prompt file"
total=0
for f in "$EVAL_PROMPTS"/*.json; do
  [ -e "$f" ] || continue
  stem=$(basename "$f" .json)
  name=${stem%_sim}
  name=${name%_edit}
  echo "== $stem (identity $name)"
  if batch_run "$stem" 'prompts generated' \
      "$PY" sample.py --restore_path "$IDENTITIES/$name" --prompt_path "$f" --output_path "$OUTPUTS/$stem" "$@"; then
    total=$((total + $(grep -o 'finetuned parameters: [0-9]*' "$BATCH_LOG" | awk '{print $3}')))
  fi
done
[ "${#BATCH_NAMES[@]}" -gt 0 ] || { echo "error: $EVAL_PROMPTS/ has no .json prompt files" >&2; exit 2; }
batch_table
echo "total finetuned parameters: $total"
[ "$BATCH_FAILED" -eq 0 ] || exit 1
