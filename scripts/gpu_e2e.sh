#!/usr/bin/env bash
# One GPU session end to end, with full-size modules and RANDOM weights (no real weights exist here):
#   random weights folder -> synthetic full-size shards -> pretraining run -> identity-module checkpoint
#   -> sample.py with it on a prompt file of 5 prompts (process start to last image timed)
#   + pretraining throughput (with and without activation checkpointing) and the sampling benchmarks.
# Results (JSON + logs) go to $RESULTS (default eval/results/gpu_e2e); SAMPLE_COMPILE_MODES picks the
# sample.py --compile modes to time (default "none default"). SAMPLE_ONLY=1 skips the pretraining
# stages and benchmarks: sample.py then runs with an untrained identity module (zero gates; the
# same computation and speed). PY picks the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's .venv like every other script; python3 where there is none (the GPU host's own environment)
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
RESULTS=${RESULTS:-eval/results/gpu_e2e}
TMP=${TMP_ROOT:-/tmp/faceid_e2e}
mkdir -p "$RESULTS" "$TMP"
W=$TMP/weights; S=$TMP/shards; R=$TMP/run
stamp() { date +%s.%N; }
since() { $PY -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$1"; }

if [ ! -f "$W/models/uvit_v1.pth" ]; then
t=$(stamp); $PY -m eval.bench.random_weights --out "$W" --device cuda >/dev/null
echo "random weights written in $(since "$t") s"
fi
ENCODER=(--encoder "$R/faceid_encoder")
if [ "${SAMPLE_ONLY:-0}" = 1 ]; then
  ENCODER=(--allow-untrained-encoder)
elif [ ! -f "$R/faceid_encoder/config.json" ]; then  # (a rerun on the same machine reuses these stages)
$PY -m data_prep.synthetic --out "$S" --samples 1024 --shard-size 128 --identities 64 | tail -2
t=$(stamp)
$PY -m pretrain.train --config pretrain/configs/v1.json --weights "$W" --shards "$S" --output_dir "$R" \
    --batch_size 16 --max_steps 40 --warmup_steps 10 --checkpoint_every 20 --log_every 10 \
    --sample_every 40 --sample_steps 5 --num_workers 4 2>&1 | grep -v -i warn | tail -15 | tee "$RESULTS/pretrain_run.log"
echo "pretraining run: $(since "$t") s"
ls "$R/faceid_encoder"
fi

# an identity record as train.py writes it (random embeddings: no face pack here)
$PY - "$TMP/record" <<'PYEOF'
import sys, torch, torch.nn.functional as F
from personalize.record import IdentityRecord, PhotoInfo
e = F.normalize(torch.randn(10, 512), dim=-1)
IdentityRecord(embeddings=e, embeddings_flip=F.normalize(e + 0.05 * torch.randn_like(e), dim=-1),
               photos=[PhotoInfo(file=f"photo{i}.jpg", box=[0, 0, 100, 100], det_score=0.9, n_faces=1) for i in range(10)],
               class_word="boy", class_word_source="folder name").save(sys.argv[1])
PYEOF
echo '["a boy", "a handsome boy", "a boy standing in the wild", "a boy on the beach", "a closer look of a boy"]' > "$TMP/prompts5.json"
for mode in ${SAMPLE_COMPILE_MODES:-none default}; do
  rm -rf "$TMP/out_$mode"
  t=$(stamp)
  $PY sample.py --restore_path "$TMP/record" --prompt_path "$TMP/prompts5.json" --output_path "$TMP/out_$mode" \
      --weights "$W" "${ENCODER[@]}" --compile "$mode" --quiet 2>&1 | grep -v -i warn | tee "$RESULTS/sample_compile_$mode.log"
  echo "sample.py (compile $mode): process start to last image $(since "$t") s" | tee -a "$RESULTS/sample_compile_$mode.log"
  ls "$TMP/out_$mode" | wc -l
done
[ "${SAMPLE_ONLY:-0}" = 1 ] && exit 0
$PY -m eval.bench.pretraining --batch_size 16 --out "$RESULTS/pretrain_b16.json" 2>&1 | grep -v -i warn | tail -1
$PY -m eval.bench.pretraining --batch_size 16 --activation_checkpointing --out "$RESULTS/pretrain_b16_ckpt.json" 2>&1 | grep -v -i warn | tail -1
