#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# sMLP with partial-prediction routing: the blocks of smlp_deterministic.sh with a
# learned gate routing feature columns on the first 20% of each block; trained and evaluated on
# the trailing 80% only (--task partial_prediction_lm), so its perplexity covers those tokens.
#
#   examples/paper/smlp_partial.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" smlp_partial "$@"
