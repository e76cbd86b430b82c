#!/usr/bin/env bash
# The paper's comparison at CPU scale: train every system (dense Transformer, gMLP, sMLP with
# deterministic routing and with partial prediction, GShard, Switch, BASE, Hash), each sized to
# the same training FLOPs per token, on the bundled corpus for the same wall-clock budget (or,
# with --updates, the same number of updates: equal FLOPs), once per seed (in rounds: every
# system with seed 1, then with seed 2, ...); score each final checkpoint on the trailing 80% of
# every validation block; then write the report (a markdown table of means and spreads over the
# seeds, and plots of validation perplexity against time and updates).
#
#   examples/compare_cpu.sh [--minutes M | --updates N] [--seeds N] [--data DIR] [--out DIR]
#                           [--systems a,b_e8,...] [--sweep-experts 1,4,16] [--parallel P]
#                           [-- extra fairseq-train flags]
#
#   --minutes        wall-clock budget of each run, validation included (default 3.5)
#   --updates        instead, N updates a run with the learning rate decayed to 0 over them
#                    (fairseq's polynomial_decay); runs are resumable: one already scored is not
#                    redone, one cut off resumes from its last checkpoint (written every 250
#                    updates, or 50 below 1,000), so the same command can be run again
#   --seeds          runs of each system, with seeds 1 to N (default 3: about 95 minutes for
#                    all eight systems on 2 cores)
#   --data           a prepared corpus (DIR/bin); the bundled one is prepared there if missing
#                    (default data/sotu)
#   --out            where the runs and the report go (default runs/compare_cpu, or
#                    runs/compare_cpu_experts with --sweep-experts)
#   --systems        a comma-separated subset (default: all, or smlp_deterministic,switch with
#                    --sweep-experts; names from `python -m fairseq_smlp.comparison.systems
#                    list`), a name ending in _e<count> for that system with <count> experts in
#                    every MoE layer; runs of other systems already in --out stay and are reported
#   --sweep-experts  train each system once per expert count instead, as <system>_e<count>;
#                    the FLOPs per token stay those of the system (experts are chosen, not added)
#   --parallel       runs trained at once (default 1; with a GPU, every run of a round shares it)
#
# Every run gets the same training recipe (below); its task, criterion, arch and size come from
# fairseq_smlp/comparison/systems.py. Flags after `--` go last to every fairseq-train and
# override the recipe. Each run lands in OUT/<system>/seed<N>/: fairseq's log (train.log; a
# resumed run appends to it), system.json (its FLOPs and parameters), checkpoints, and
# valid_trailing.log, fairseq-eval-lm's perplexity of the last checkpoint over the trailing 80%
# of each validation block (--task partial_prediction_lm), the column on which every system,
# smlp_partial included, is ranked; seed 1 of a sparse system also gets routing.png, the tokens
# each expert of its last checkpoint took (python -m fairseq_smlp.routing_map). Perplexities on
# this corpus are per token of its own vocabulary and are not comparable with published numbers.
# Training runs on the GPU when torch sees one, else on the CPU.
set -euo pipefail

minutes=3.5
minutes_given=""
updates=""
parallel=""
seeds=3
data=data/sotu
out=""
systems=""
sweep=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes|--updates|--parallel|--seeds|--data|--out|--systems|--sweep-experts)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "compare_cpu.sh: $1 needs a value (usage: see the top of $0)" >&2
        exit 2
      fi ;;&
    --minutes) minutes="$2"; minutes_given=1; shift 2 ;;
    --updates) updates="$2"; shift 2 ;;
    --parallel) parallel="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --systems) systems="$2"; shift 2 ;;
    --sweep-experts) sweep="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "compare_cpu.sh: unknown option '$1' (valid: --minutes, --updates, --seeds, --data," \
         "--out, --systems, --sweep-experts, --parallel, --)" >&2
       exit 2 ;;
  esac
done
if ! [[ $minutes =~ ^[0-9]*\.?[0-9]+$ ]] || [[ $minutes =~ ^0*\.?0*$ ]]; then
  echo "compare_cpu.sh: --minutes must be a positive number of minutes; got '$minutes'" >&2
  exit 2
fi
# Whole numbers of at most 9 digits: bash's arithmetic and test wrap around past 63 bits.
WHOLE='^[1-9][0-9]{0,8}$'
if [ -n "$updates" ] && ! [[ $updates =~ $WHOLE ]]; then
  echo "compare_cpu.sh: --updates must be a whole number of updates from 1 to 999999999; got" \
    "'$updates'" >&2
  exit 2
fi
if [ -n "$updates" ] && [ -n "$minutes_given" ]; then
  echo "compare_cpu.sh: --minutes and --updates each set when a run ends; give one of them" >&2
  exit 2
fi
if [ -n "$parallel" ] && ! [[ $parallel =~ $WHOLE ]]; then
  echo "compare_cpu.sh: --parallel must be a whole number of runs from 1 to 999999999; got" \
    "'$parallel'" >&2
  exit 2
fi
if ! [[ $seeds =~ $WHOLE ]]; then
  echo "compare_cpu.sh: --seeds must be a whole number of runs from 1 to 999999999; got" \
    "'$seeds'" >&2
  exit 2
fi
if [ -n "$sweep" ] && ! [[ $sweep =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
  echo "compare_cpu.sh: --sweep-experts takes expert counts, 1 or more, separated by commas" \
    "(e.g. 1,4,16); got '$sweep'" >&2
  exit 2
fi

if [ -e "$data" ] && ! [ -d "$data" ]; then
  echo "compare_cpu.sh: --data $data is a file; give the directory of a prepared corpus" >&2
  exit 2
fi
if [ -n "$out" ] && [ -e "$out" ] && ! [ -d "$out" ]; then
  echo "compare_cpu.sh: --out $out is a file; give a directory for the runs and the report" >&2
  exit 2
fi

# The package's directory, found without importing it (and fairseq with it).
USER_DIR=$(python -c 'import importlib.util, os
print(os.path.dirname(importlib.util.find_spec("fairseq_smlp").origin))')
SYSTEMS=(python "$USER_DIR/comparison/systems.py")  # needs nothing but the standard library
if [ -n "$sweep" ]; then
  out=${out:-runs/compare_cpu_experts}
  systems=${systems:-smlp_deterministic,switch}
  IFS=, read -ra counts <<< "$sweep"
else
  out=${out:-runs/compare_cpu}
  systems=${systems:-$("${SYSTEMS[@]}" list | paste -sd, -)}
  counts=("")
fi
if python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  device=()
  parallel=${parallel:-8}  # the cpu scale leaves a GPU mostly waiting on one run's launches
else
  device=(--cpu)
  parallel=${parallel:-1}
fi

# Validation every 50 updates (ten or more points a run) on the first 21 batches of the
# validation set (fairseq stops after step --max-valid-steps, counted from 0), so that it takes
# a small share of the budget; the trailing-80% score at the end reads all of it.
RECIPE=(
  --sample-break-mode none --batch-size 16
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0 --lr 2e-3 --warmup-updates 100
  --max-valid-steps 20 --no-epoch-checkpoints "${device[@]}" --num-workers 0 --log-format json
  --log-interval 50
)
budget="$minutes minutes"
if [ -n "$updates" ]; then
  budget="$updates updates"
  # Equal updates, the learning rate decayed to 0 over them; a checkpoint at every validation,
  # from which a cut-off run resumes.
  every=$(( updates >= 1000 ? 250 : 50 ))
  RECIPE+=(
    --lr-scheduler polynomial_decay --total-num-update "$updates" --end-learning-rate 0
    --max-update "$updates" --validate-interval-updates "$every"
    --save-interval-updates "$every" --keep-interval-updates 1
  )
else
  RECIPE+=(
    --lr-scheduler inverse_sqrt --stop-time-hours "$(python -c "print($minutes / 60)")"
    --max-update 1000000 --validate-interval-updates 50
  )
fi

# The systems' flags, checked before anything trains; labels in training order.
IFS=, read -ra names <<< "$systems"
labels=()
declare -A system_flags
for name in "${names[@]}"; do
  for count in "${counts[@]}"; do
    own_count=$count
    if [[ $name =~ ^(.+)_e([1-9][0-9]*)$ ]]; then
      if [ -n "$sweep" ]; then
        echo "compare_cpu.sh: --systems $name sets its own expert count, which --sweep-experts" \
          "would set again; give one of them" >&2
        exit 2
      fi
      name=${BASH_REMATCH[1]} own_count=${BASH_REMATCH[2]}
    fi
    label="$name${own_count:+_e$own_count}"
    labels+=("$label")
    system_flags[$label]=$("${SYSTEMS[@]}" flags "$name" --scale cpu \
      ${own_count:+--experts "$own_count"}) || exit 2
  done
done
[ -f "$data/bin/dict.txt" ] || bash "$(dirname "$0")/prepare_data.sh" --dest "$data"

# Each system's FLOPs and parameters (its runs' system.json), counted from the model its flags
# and the extra ones build: the count runs the models' own checks of their flags, so a value no
# model takes (an expert count that does not divide a width, --decoder-layers 0) stops here.
declare -A system_json
for label in "${labels[@]}"; do
  mapfile -t flags <<< "${system_flags[$label]}"
  if ! system_json[$label]=$(python -m fairseq_smlp.comparison.flops "$data/bin" \
      --user-dir "$USER_DIR" "${flags[@]}" "${extra[@]}" --json); then
    echo "compare_cpu.sh: the flags of '$label' (above) build no model; nothing was trained" >&2
    exit 2
  fi
done

# fairseq-eval-lm's perplexity over the trailing 80% of every validation block, from the run's
# last checkpoint, with the block length it trained on.
score_trailing() {
  local run=$1 checkpoint=$1/checkpoints/checkpoint_last.pt block
  [ -f "$checkpoint" ] || return 0  # --no-save: nothing to score
  block=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["tokens_per_sample"])' \
    "$run/system.json")
  if ! fairseq-eval-lm "$data/bin" --user-dir "$USER_DIR" --path "$checkpoint" \
      --task partial_prediction_lm --tokens-per-sample "$block" --sample-break-mode none \
      --gen-subset valid --batch-size 16 --cpu --num-workers 0 > "$run/valid_trailing.log" 2>&1
  then
    echo "compare_cpu.sh: fairseq-eval-lm failed on $checkpoint; see $run/valid_trailing.log" >&2
    return 1
  fi
  draw_routing "$run" "$checkpoint"
}

# Where the tokens go: the routing picture of seed 1's last checkpoint of each sparse system
# (routing.png beside its logs), which the report links; a dense system has none to draw, nor
# has a run whose checkpoints are gone (a clone of committed results: git keeps no checkpoints).
draw_routing() {
  local run=$1 checkpoint=$2
  [ "${run##*/}" = seed1 ] && [ -f "$checkpoint" ] || return 0
  if python -m fairseq_smlp.routing_map "$checkpoint" "$data/bin" --out "$run/routing.png" \
      > "$run/routing.log" 2>&1; then
    return 0
  fi
  if grep -qs "has no routing module" "$run/routing.log"; then
    rm -f "$run/routing.log"
  else
    echo "compare_cpu.sh: no routing picture for $run; see $run/routing.log" >&2
  fi
}

# A wall-clock run cannot resume (its budget would count twice): those start afresh. A run of
# --updates is done once scored; otherwise fairseq-train resumes it from its last checkpoint.
if [ -z "$updates" ]; then
  for label in "${labels[@]}"; do
    rm -rf "${out:?}/$label"
  done
fi

# A run of --updates is trained once fairseq-train stopped at (or, resumed there, past) update N,
# and done once scored after that.
trained() {
  [ -n "$updates" ] &&
    grep -qs "Stopping training due to num_updates: [0-9]* >= max_update: $updates" \
      "$1/train.log"
}

train_and_score() {  # train_and_score LABEL SEED
  local label=$1 seed=$2 run="$out/$1/seed$2" flags recipe
  mapfile -t flags <<< "${system_flags[$label]}"
  mkdir -p "$run"
  # A run resumes only with the flags it started with: another recipe would mix two runs.
  recipe=$(printf '%s\n' "${flags[@]}" "${RECIPE[@]}" --seed "$seed" "${extra[@]}")
  if [ -f "$run/recipe.txt" ] && [ "$recipe" != "$(cat "$run/recipe.txt")" ]; then
    echo "compare_cpu.sh: $run was started with other flags (its recipe.txt); give another" \
      "--out, or remove $run to train it afresh" >&2
    return 1
  fi
  printf '%s\n' "$recipe" > "$run/recipe.txt"
  if trained "$run"; then
    if grep -qs "Perplexity:" "$run/valid_trailing.log"; then
      echo "== $label, seed $seed: done earlier ($run/valid_trailing.log)"
      [ -f "$run/routing.png" ] || draw_routing "$run" "$run/checkpoints/checkpoint_last.pt"
    else
      echo "== $label, seed $seed: trained earlier; scoring it"
      score_trailing "$run"
    fi
    return
  fi
  echo "== $label, seed $seed: $budget (fairseq-train log: $run/train.log)"
  printf '%s\n' "${system_json[$label]}" > "$run/system.json"
  # fairseq's progress lines on the terminal, its whole output in the log.
  if ! fairseq-train "$data/bin" --user-dir "$USER_DIR" "${flags[@]}" "${RECIPE[@]}" \
    --seed "$seed" --save-dir "$run/checkpoints" "${extra[@]}" 2>&1 | tee -a "$run/train.log" |
    { grep --line-buffered -E '\| (train_inner|valid) \|' || true; }; then
    echo "compare_cpu.sh: fairseq-train failed for '$label' (seed $seed); see" \
      "$run/train.log" >&2
    return 1
  fi
  score_trailing "$run"
}

# Seed by seed, every system once in each round: the machine's speed drifts by 5-10% over hours
# (a system's tokens/s moved that much between two runs of the same code), and in turns the
# drift falls on every system alike instead of on whichever trained its seeds in a slow spell.
# Up to --parallel runs at once; a failed run leaves the others to finish, then fails the whole.
trap 'kill $(jobs -rp) 2> /dev/null || true' EXIT
pids=()
for seed in $(seq 1 "$seeds"); do
  for label in "${labels[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
      wait -n || true  # its status is read below
    done
    train_and_score "$label" "$seed" &
    pids+=($!)
  done
done
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
[ "$failed" -eq 0 ] || exit 1

python -m fairseq_smlp.comparison.report "$out"
