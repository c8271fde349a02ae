#!/usr/bin/env bash
# Pretrain the identity module with accelerate (DDP). See docs/pretraining.md.
#
#   bash scripts/pretrain.sh                                   1 GPU, pretrain/configs/v1.json
#   NUM_GPUS=8 bash scripts/pretrain.sh                        8 GPUs of one machine
#   NUM_NODES=2 NODE_RANK=0 MASTER_ADDR=node0 NUM_GPUS=8 bash scripts/pretrain.sh     on node0
#   NUM_NODES=2 NODE_RANK=1 MASTER_ADDR=node0 NUM_GPUS=8 bash scripts/pretrain.sh     on node1
#   bash scripts/pretrain.sh --shards /data/shards --batch_size 16 --activation_checkpointing
#
# Environment: CONFIG (default pretrain/configs/v1.json), NUM_GPUS (per node, default: every visible
# GPU), NUM_NODES (default 1), NODE_RANK (default 0), MASTER_ADDR / MASTER_PORT (node 0's address and
# a free port, default 127.0.0.1:29500). Arguments override config fields (`--lr 5e-5`). Rerunning the
# same command resumes from the last checkpoint of output_dir (`--resume none` starts over).
# Multi-node runs need output_dir on a filesystem every node sees (rank 0 writes the checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-pretrain/configs/v1.json}
NUM_NODES=${NUM_NODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
TOTAL=$((NUM_GPUS * NUM_NODES))
launch=("$PY" -m accelerate.commands.launch --num_processes "$TOTAL" --num_machines "$NUM_NODES"
        --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"
        --mixed_precision bf16 --dynamo_backend no)
if [ "$TOTAL" -gt 1 ]; then
  launch+=(--multi_gpu)
fi
exec "${launch[@]}" -m pretrain.train --config "$CONFIG" "$@"
