#!/usr/bin/env bash
# The main job: set up, personalise every identity in train_data/, generate every prompt file in
# eval_prompts/. Needs the weights described in checkpoints/README.md (in checkpoints/ or
# $UNIDIFFUSER_WEIGHTS):
#   all of them   the main job (train.sh, then sample.sh);
#   none at all   the embedded demo instead (python -m eval.demo: the same train.py / sample.py on rendered
#                 identities with the identity world's weights, contact sheets and scores; docs/demo.md);
#   some          stops before any work with a message naming what is missing and how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -d "${EVAL_PROMPTS:-eval_prompts}" ] && [ -d ../shared/reference/eval_prompts ]; then
  export EVAL_PROMPTS=../shared/reference/eval_prompts
fi
# every weight file the workflow needs (models.check_weights.MAIN_JOB)
needed="uvit autoencoder caption_decoder clip_text face_pack identity"
presence=$(.venv/bin/python -m models.check_weights --presence $needed)
if [ "$presence" = none ]; then
  exec .venv/bin/python -m eval.demo  # says so in its first line
fi
# checked before any work (one line for each missing or damaged file)
.venv/bin/python -m models.check_weights $needed || {
  echo "scripts/run.sh: stopped: the main job needs every weight above (only with none at all does it run the embedded demo)" >&2
  exit 2
}
# an identity that fails does not stop the others: sampling still runs for every one that worked
status=0
bash scripts/train.sh || status=$?
[ "$status" -le 1 ] || exit "$status"  # 2: nothing to personalise; 130: interrupted
bash scripts/sample.sh || exit $?
exit "$status"
