#!/usr/bin/env bash
# The training recipe shared by the paper-scale scripts beside this file: fairseq-train of one
# compared system at the paper's main-comparison size (fairseq_smlp/comparison/systems.py,
# scale "paper": d_model 1024, d_ffn 4096 class, T = 1024, 16 experts per MoE layer, all
# systems at the FLOPs per token of fairseq's transformer_lm_gpt3_medium).
#
#   examples/paper/train.sh SYSTEM DATA_BIN [extra fairseq-train flags]
#
# Where the paper's text was not at hand, the recipe follows the same group's MoE language
# models (Artetxe et al. 2021, fairseq examples/moe_lm), as recorded in docs/design.md: Adam
# (0.9, 0.98), eps 1e-6, clip-norm 0.1, learning rate 3e-4 with 2,000 warm-up updates and
# polynomial decay over 25,000 updates, 0.5M tokens per update; bf16 here where that recipe had
# fp16, since the MoE layers run as packed grouped products in bf16 only (in fp16 torch's grouped
# product waits on the host, and the layers fall back to padded buffers).
#
# Environment:
#   GPUS       number of GPUs of the whole job (default 32); the per-update batch stays
#              GPUS x 8 sequences x 1024 tokens x UPDATE_FREQ = 524,288 tokens
#   SAVE_DIR   checkpoints (default checkpoints/paper/SYSTEM)
#   PRECISION  precision flags (default "--bf16 --fp16-no-flatten-grads": a flattened fp32 copy
#              cannot keep the experts apart and is refused; empty for fp32, e.g. a CPU smoke run)
#   FAIRSEQ_TRAIN  the command that trains (default fairseq-train)
#
# One node: `GPUS=8 examples/paper/smlp_deterministic.sh DATA_BIN` (fairseq starts a process per
# GPU). SLURM: `srun --nodes 4 --ntasks-per-node 8 --gpus-per-task 1
# examples/paper/smlp_deterministic.sh DATA_BIN --distributed-port 12345`.
# Flags given after DATA_BIN go last and override the recipe.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 SYSTEM DATA_BIN [extra fairseq-train flags]" >&2
  exit 2
fi
SYSTEM=$1
DATA=$2
shift 2

GPUS=${GPUS:-32}
SEQUENCES_PER_UPDATE=512  # x 1024 tokens = 0.5M tokens per update
SEQUENCES_PER_GPU=8
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]] || (( SEQUENCES_PER_UPDATE % (GPUS * SEQUENCES_PER_GPU) != 0 )); then
  echo "train.sh: GPUS must divide $((SEQUENCES_PER_UPDATE / SEQUENCES_PER_GPU)) (the batch is" \
    "$SEQUENCES_PER_UPDATE sequences of which each GPU takes $SEQUENCES_PER_GPU a step); got '$GPUS'" >&2
  exit 2
fi
UPDATE_FREQ=$((SEQUENCES_PER_UPDATE / (GPUS * SEQUENCES_PER_GPU)))
SAVE_DIR=${SAVE_DIR:-checkpoints/paper/$SYSTEM}
PRECISION=${PRECISION---bf16 --fp16-no-flatten-grads}
# The package's directory, found without importing it (and fairseq with it).
USER_DIR=$(python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("fairseq_smlp").origin))')
SYSTEMS=(python "$USER_DIR/comparison/systems.py")  # needs nothing but the standard library
mapfile -t MODEL < <("${SYSTEMS[@]}" flags "$SYSTEM" --scale paper)
[ ${#MODEL[@]} -gt 0 ] || exit 2  # systems.py has said why

# shellcheck disable=SC2086  # PRECISION and FAIRSEQ_TRAIN are lists of words
exec ${FAIRSEQ_TRAIN:-fairseq-train} "$DATA" --user-dir "$USER_DIR" "${MODEL[@]}" \
  --sample-break-mode none --batch-size $SEQUENCES_PER_GPU --update-freq $UPDATE_FREQ \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --clip-norm 0.1 \
  --lr 3e-4 --lr-scheduler polynomial_decay --warmup-updates 2000 \
  --total-num-update 25000 --max-update 25000 --dropout 0.0 $PRECISION \
  --validate-interval-updates 1000 --save-interval-updates 2000 --keep-interval-updates 2 \
  --no-epoch-checkpoints --save-dir "$SAVE_DIR" \
  --log-format json --log-interval 100 "$@"
