#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# the Hash layers baseline (Roller et al. 2021): transformer_lm_gpt3_medium with every
# other FFN an MoE layer of 16 experts chosen by a fixed random hash of the token id, the dense
# Transformer's FLOPs per token.
#
#   examples/paper/hash.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" hash "$@"
