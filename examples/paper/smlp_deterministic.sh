#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# sMLP with deterministic routing, the paper's fastest system: 28 blocks of d_model
# 1024 and d_ffn 4096, 14 of them sparse (an sMoE of 16 spatial experts, column chunk e to
# expert e, and a tMoE of 16 FFN experts with BASE routing), the dense Transformer's FLOPs per
# token.
#
#   examples/paper/smlp_deterministic.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" smlp_deterministic "$@"
