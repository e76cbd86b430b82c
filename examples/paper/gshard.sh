#!/usr/bin/env bash
# Reproduces, in the comparison of Yu et al. 2022 (arXiv 2203.06850) at its main scale,
# the GShard baseline (Lepikhin et al. 2020): transformer_lm_gpt3_medium with every
# other FFN an MoE layer of 16 experts and top-2 gating (second-expert policy 'sampling',
# the gate's default, as fairseq's). Experts
# are 2048 wide, so that the two a token meets cost what the dense 4096-wide FFN does; the
# dense layers keep the reference's width.
#
#   examples/paper/gshard.sh DATA_BIN [extra fairseq-train flags]
#
# The recipe, GPU count and SLURM launch are in train.sh beside this file.
exec bash "$(dirname "$0")/train.sh" gshard "$@"
