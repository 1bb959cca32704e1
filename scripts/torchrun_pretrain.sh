#!/bin/bash
# The same run as scripts/slurm_pretrain.sbatch without SLURM: start this script once on each of the
# NNODES machines, with the same MASTER_ADDR (a reachable address of the first node) on all of them.
#   MASTER_ADDR=10.0.0.1 NNODES=4 bash scripts/torchrun_pretrain.sh
# torchrun starts one process per GPU and sets the ranks; Lightning reads them (TorchElasticEnvironment).
# On one machine: NNODES=1 bash scripts/torchrun_pretrain.sh (MASTER_ADDR defaults to localhost).
set -euo pipefail

NNODES="${NNODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-29500}"

torchrun \
    --nnodes "${NNODES}" \
    --nproc-per-node "${GPUS_PER_NODE}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${MASTER_ADDR}:${MASTER_PORT}" \
    --rdzv-id mae-vit-large \
    -m mae_lightning fit \
    --config configs/imagenet/pretrain.yaml \
    --config configs/imagenet/pretrain_vit_large.yaml \
    --config configs/presets/multinode.yaml \
    --trainer.num_nodes "${NNODES}" \
    --trainer.devices "${GPUS_PER_NODE}"
