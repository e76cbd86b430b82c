#!/usr/bin/env bash
# The README's main job: prepare the bundled corpus (if not done yet), train the flagship model on
# CPU for a few minutes, report its test perplexity with fairseq-eval-lm and print a continuation
# of a fixed prompt with fairseq-interactive.
#
#   examples/quickstart_cpu.sh     # environment: ARCH, CRITERION, DATA, SAVE_DIR, MAX_UPDATE
#
# Perplexities on this corpus are per sentencepiece token of its own vocabulary: they are not
# comparable with published WikiText or paper numbers. The terminal shows fairseq-train's progress
# lines; its whole output is in SAVE_DIR/train.log.
set -euo pipefail
if [ $# -gt 0 ]; then
  echo "quickstart_cpu.sh takes no arguments (got: $*); it reads ARCH, CRITERION, DATA," \
    "SAVE_DIR and MAX_UPDATE from the environment, e.g. MAX_UPDATE=200 bash $0" >&2
  exit 2
fi
# fairscale warns of torch.cuda.amp's deprecation when fairseq imports it, before the plugin can
# filter it (fairseq_smlp/trainer/quiet_log.py filters the rest): nothing a user can act on.
export PYTHONWARNINGS=ignore::FutureWarning:fairscale.experimental.nn.offload

ARCH=${ARCH:-smlp_deterministic_tiny}
CRITERION=${CRITERION:-moe_cross_entropy}
DATA=${DATA:-data/sotu}
SAVE_DIR=${SAVE_DIR:-checkpoints/quickstart_$ARCH}
MAX_UPDATE=${MAX_UPDATE:-1000}
TOKENS_PER_SAMPLE=128
# The package's directory, found without importing it (and fairseq with it).
USER_DIR=$(python -c 'import importlib.util, os
print(os.path.dirname(importlib.util.find_spec("fairseq_smlp").origin))')

[ -f "$DATA/bin/dict.txt" ] || bash "$(dirname "$0")/prepare_data.sh" --dest "$DATA"
mkdir -p "$SAVE_DIR"

if ! fairseq-train "$DATA/bin" --user-dir "$USER_DIR" --task language_modeling --arch "$ARCH" \
  --criterion "$CRITERION" \
  --tokens-per-sample $TOKENS_PER_SAMPLE --sample-break-mode none --batch-size 16 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 \
  --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 100 --max-update "$MAX_UPDATE" \
  --validate-interval-updates 500 --save-interval-updates 500 --keep-interval-updates 1 \
  --no-epoch-checkpoints --save-dir "$SAVE_DIR" --seed 1 \
  --cpu --num-workers 0 --log-format simple --log-interval 100 2>&1 | tee "$SAVE_DIR/train.log" |
  { grep --line-buffered -E '\| (train_inner|valid|train) \||done training' || true; }; then
  echo "quickstart_cpu.sh: fairseq-train failed; the end of $SAVE_DIR/train.log:" >&2
  tail -n 20 "$SAVE_DIR/train.log" >&2
  exit 1
fi

fairseq-eval-lm "$DATA/bin" --user-dir "$USER_DIR" --path "$SAVE_DIR/checkpoint_best.pt" \
  --gen-subset test --tokens-per-sample $TOKENS_PER_SAMPLE --batch-size 16 \
  --cpu --num-workers 0 2>&1 | tee "$SAVE_DIR/eval_test.log" | grep -E "Evaluated|Perplexity"

# Top-10 sampling with a fixed seed: the same text on every run on the same machine.
printf "The state of the union is\n" | fairseq-interactive "$DATA/bin" --user-dir "$USER_DIR" \
  --task language_modeling --tokens-per-sample $TOKENS_PER_SAMPLE \
  --path "$SAVE_DIR/checkpoint_best.pt" --bpe sentencepiece --sentencepiece-model "$DATA/spm.model" \
  --sampling --sampling-topk 10 --beam 1 --max-len-b 40 --seed 1 --cpu --num-workers 0 2>&1 \
  | tee "$SAVE_DIR/sample.log" | grep "^D-0" | cut -f3
