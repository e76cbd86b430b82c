#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# the dense Transformer baseline: fairseq's transformer_lm_gpt3_medium (24 layers,
# d_model 1024, d_ffn 4096, 16 heads), the compute reference every other system is sized to.
#
#   examples/paper/transformer.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" transformer "$@"
