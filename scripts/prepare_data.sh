#!/usr/bin/env bash
# Corpus -> webdataset shards of precomputed features (see docs/pretraining.md).
#
#   bash scripts/prepare_data.sh                         LAION-Face-style tars under data/laion-face/
#   SOURCE=folder INPUT=data/people bash scripts/prepare_data.sh --identity-from-folder
#   SOURCE=hf INPUT=data/facecaption_hf bash scripts/prepare_data.sh --caption-column caption
#
# Environment: SOURCE (wds | folder | hf, default wds), INPUT (default: the tars
# data/laion-face/{00000..00099}.tar), OUT (default shards), WEIGHTS (weights folder, default
# checkpoints: the VAE, CLIP-L text + caption decoder, ViT-B/32 and an insightface pack),
# NUM_GPUS (processes, default: every visible GPU, or 1). Extra arguments go to `python -m data_prep`.
# Rerunning the same command resumes: finished shards are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SOURCE=${SOURCE:-wds}
DEFAULT_INPUT='data/laion-face/{00000..00099}.tar'  # brace pattern expanded by data_prep, not bash
INPUT=${INPUT:-$DEFAULT_INPUT}
OUT=${OUT:-shards}
WEIGHTS=${WEIGHTS:-checkpoints}
if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
args=(-m data_prep --source "$SOURCE" --input "$INPUT" --out "$OUT" --weights "$WEIGHTS"
      --shard-size 1000 --batch-size 32 --resolution 512 --min-face-size 64 --min-det-score 0.6 "$@")
if [ "$NUM_GPUS" -gt 1 ]; then
  # one process per GPU; each takes shards rank, rank + NUM_GPUS, ...
  exec "$PY" -m accelerate.commands.launch --multi_gpu --num_processes "$NUM_GPUS" --num_machines 1 \
    --mixed_precision no --dynamo_backend no "${args[@]}"
fi
exec "$PY" "${args[@]}"
