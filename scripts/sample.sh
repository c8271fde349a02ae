#!/usr/bin/env bash
# Generate every prompt file under eval_prompts/ with its identity:
#   <name>.json -> outputs/<name>;  <name>_sim.json / <name>_edit.json -> outputs/<name>_sim / _edit
# Environment: EVAL_PROMPTS (default eval_prompts), IDENTITIES (identities), OUTPUTS (outputs);
# extra sample.py options as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL_PROMPTS=${EVAL_PROMPTS:-eval_prompts}
IDENTITIES=${IDENTITIES:-identities}
OUTPUTS=${OUTPUTS:-outputs}
PY=${PY:-.venv/bin/python}
[ -d "$EVAL_PROMPTS" ] || { echo "error: no $EVAL_PROMPTS/ folder of <name>.json prompt files" >&2; exit 2; }
total=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for f in "$EVAL_PROMPTS"/*.json; do
  [ -e "$f" ] || continue
  stem=$(basename "$f" .json)
  name=${stem%_sim}
  name=${name%_edit}
  echo "== $stem (identity $name)"
  "$PY" sample.py --restore_path "$IDENTITIES/$name" --prompt_path "$f" --output_path "$OUTPUTS/$stem" "$@" \
    | tee "$log"
  total=$((total + $(grep -o 'finetuned parameters: [0-9]*' "$log" | awk '{print $3}')))
done
echo "total finetuned parameters: $total"
