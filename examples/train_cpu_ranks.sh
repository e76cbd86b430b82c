#!/usr/bin/env bash
# fairseq-train on N CPU processes of one machine, data- and expert-parallel over gloo.
#
#   examples/train_cpu_ranks.sh N DATA_DIR [fairseq-train flags ...]
#
# PyTorch's torchrun starts the N ranks and, when one fails, stops the others and reports which
# rank failed. Each rank runs fairseq-train with its rank and world size given explicitly: left
# to itself, fairseq divides torchrun's ranks by the number of CUDA devices. The data-parallel
# backend is fairseq's legacy_ddp, since its pytorch_ddp hands CUDA device ids to DDP.
# With E experts per MoE layer, E must be a multiple or a divisor of N; N is at most 4 per core.
set -euo pipefail

usage="usage: $0 N DATA_DIR [fairseq-train flags ...]"
if ! [[ ${1:-} =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage  (N: the number of CPU ranks, 1 or more; got '${1:-}')" >&2
  exit 2
fi
# Each rank is a whole fairseq-train process: past a few per core they only wait on each other.
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
if [ ${#1} -gt 6 ] || [ "$1" -gt $((4 * cores)) ]; then
  echo "$0: N is $1 ranks, more than 4 per CPU core (this machine has $cores: at most" \
    "$((4 * cores))); each rank is a fairseq-train process of its own" >&2
  exit 2
fi
if [ $# -lt 2 ]; then
  echo "$usage  (DATA_DIR: the directory fairseq-preprocess wrote, e.g. data/sotu/bin)" >&2
  exit 2
fi
if ! [ -f "${2%%:*}/dict.txt" ]; then  # fairseq reads the dictionary of the first of a:b:c
  echo "$0: DATA_DIR ${2%%:*} holds no dict.txt; give the directory fairseq-preprocess wrote" \
    "(e.g. data/sotu/bin)" >&2
  exit 2
fi
NPROC=$1
shift

exec torchrun --standalone --nproc-per-node "$NPROC" --no-python bash -c '
  exec fairseq-train "$@" --cpu --ddp-backend legacy_ddp --distributed-backend gloo \
    --distributed-init-method env:// --distributed-no-spawn \
    --distributed-world-size "$WORLD_SIZE" --distributed-rank "$RANK"' fairseq-train "$@"
