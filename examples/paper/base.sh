#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# the BASE layers baseline (Lewis et al. 2021): transformer_lm_gpt3_medium with every
# other FFN an MoE layer of 16 experts and balanced assignment of tokens to experts, the dense
# Transformer's FLOPs per token.
#
#   examples/paper/base.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" base "$@"
