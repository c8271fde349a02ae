#!/usr/bin/env bash
# The main job: set up, personalise every identity in train_data/, generate every prompt file in
# eval_prompts/. Needs the weights described in checkpoints/README.md; stops with a clear message
# naming what is missing otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -d "${EVAL_PROMPTS:-eval_prompts}" ] && [ -d ../shared/reference/eval_prompts ]; then
  export EVAL_PROMPTS=../shared/reference/eval_prompts
fi
bash scripts/train.sh
bash scripts/sample.sh
