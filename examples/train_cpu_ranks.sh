#!/usr/bin/env bash
# fairseq-train on N CPU processes of one machine, data- and expert-parallel over gloo.
#
#   examples/train_cpu_ranks.sh N DATA_DIR [fairseq-train flags ...]
#
# PyTorch's torchrun starts the N ranks and, when one fails, stops the others and reports which
# rank failed. Each rank runs fairseq-train with its rank and world size given explicitly: left
# to itself, fairseq divides torchrun's ranks by the number of CUDA devices. The data-parallel
# backend is fairseq's legacy_ddp, since its pytorch_ddp hands CUDA device ids to DDP.
# With E experts per MoE layer, E must be a multiple or a divisor of N.
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N DATA_DIR [fairseq-train flags ...]  (N: number of CPU ranks, got '${1:-}')" >&2
  exit 2
fi
NPROC=$1
shift

exec torchrun --standalone --nproc-per-node "$NPROC" --no-python bash -c '
  exec fairseq-train "$@" --cpu --ddp-backend legacy_ddp --distributed-backend gloo \
    --distributed-init-method env:// --distributed-no-spawn \
    --distributed-world-size "$WORLD_SIZE" --distributed-rank "$RANK"' fairseq-train "$@"
