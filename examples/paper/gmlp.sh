#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# the dense all-MLP baseline, gMLP (Liu et al. 2021): 42 blocks of d_model 1024 and
# d_ffn 4096 with causal (1024 x 1024) spatial gating, the dense Transformer's FLOPs per token.
#
#   examples/paper/gmlp.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" gmlp "$@"
