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
# every weight file the workflow needs, checked before any work (one line for each missing or damaged file)
.venv/bin/python -m models.check_weights uvit autoencoder caption_decoder clip_text face_pack identity
# an identity that fails does not stop the others: sampling still runs for every one that worked
status=0
bash scripts/train.sh || status=$?
[ "$status" -le 1 ] || exit "$status"  # 2: nothing to personalise; 130: interrupted
bash scripts/sample.sh || exit $?
exit "$status"
