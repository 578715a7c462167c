#!/usr/bin/env bash
# Multi-node continued pre-training with Composer's launcher under Slurm: one launcher per node, 8 GPUs each.
#   sbatch --nodes=2 scripts/slurm_multinode.sh yamls/phase1.yml [key=value ...]
# Data (data_local) and save_folder must be on a filesystem every node sees; set global_train_batch_size to
# nodes x 8 x slots per GPU (ModernBERT-base: 72 slots per GPU).
#SBATCH --job-name=flexbert
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
set -euo pipefail
CONFIG=${1:?usage: sbatch --nodes=N scripts/slurm_multinode.sh CONFIG.yml [key=value ...]}
shift
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
WORLD_SIZE=$((SLURM_NNODES * GPUS_PER_NODE))
# NCCL: InfiniBand where present; NVLink multicast (NVLS) off, as on the machines this was tested on.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
srun --kill-on-bad-exit=1 bash -c "composer --world_size $WORLD_SIZE --nproc $GPUS_PER_NODE \
  --node_rank \$SLURM_NODEID --base_rank \$((SLURM_NODEID * $GPUS_PER_NODE)) \
  --master_addr $MASTER_ADDR --master_port $MASTER_PORT main.py $CONFIG $*"
