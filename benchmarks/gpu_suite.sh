#!/usr/bin/env bash
# Every GPU figure of the project, side by side in one run on one GPU: the device and what it
# supports, a check that training routing never waits on the host, the token mixers and MoE
# layers against their dense counterparts (bf16, the paper's widths), where their GPU time goes,
# each routing region eager and compiled, fairseq-train tokens/s and MFU of the eight compared
# systems at equal FLOPs per token, one profiled fairseq-train step of each (GPU busy share, host
# waits), and the fully_sharded check. A step past its time limit or failing is named and the
# next one runs. On an H100 (2026-11-26) the device, mixer, MoE and kernel steps took about 65 s
# together, fairseq-train about 24 s per system, mostly its start, and the fully_sharded check
# about 2 minutes; the compiled and profiled steps are new and unmeasured, and with them the
# whole suite may outgrow 8 minutes: name the steps to run to split it over two calls.
#
#   bash benchmarks/gpu_suite.sh DATA_BIN [STEP ...]    # DATA_BIN from examples/prepare_data.sh
#
# STEP: device, mixers, moe, kernels, compiled, train, profile, fsdp (default: all, in that order).
set -uo pipefail
STEPS=(device mixers moe kernels compiled train profile fsdp)
data=${1:?usage: bash benchmarks/gpu_suite.sh DATA_BIN [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=("${STEPS[@]}")
for name in "${steps[@]}"; do
  if [[ " ${STEPS[*]} " != *" $name "* ]]; then
    echo "gpu_suite.sh: unknown step '$name' (valid: ${STEPS[*]})" >&2
    exit 2
  fi
done
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

# suite_step NAME SECONDS TITLE COMMAND...: if NAME was asked for, its section, and COMMAND with
# a time limit, named if it fails; the next step runs either way.
suite_step() {
  local name=$1 limit=$2 title=$3
  shift 3
  [[ " ${steps[*]} " == *" $name "* ]] || return 0
  printf '\n== %s\n' "$title"
  timeout "$limit" "$@" 2>&1 | grep -v -e Warning -e 'return torch.cuda.amp' -e tensorboardX
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 0 ] || echo "FAILED (exit $status): $*"
}

suite_step device 30 "device" python benchmarks/gpu_device_check.py
suite_step mixers 40 "token mixers: bf16, batch 16, T 1024, width 2048, d_model 1024" \
  python benchmarks/spatial_mixers.py --device cuda --dtype bfloat16 --batch 16 --length 1024 \
  --width 2048 --embed-dim 1024 --experts 1 16
suite_step moe 30 "MoE layers: bf16, 16384 tokens, d_model 1024, d_ffn 4096, 16 experts" \
  python benchmarks/moe_layers.py --device cuda --dtype bfloat16 --tokens 16384 \
  --embed-dim 1024 --ffn-dim 4096 --experts 16
suite_step kernels 40 "where the GPU time goes: top kernels of one training step, and host waits" \
  python benchmarks/profile_routing.py
suite_step compiled 180 \
  "routing regions eager and compiled (--compile-routing): bf16, the MoE layers' sizes" \
  python benchmarks/compiled_regions.py --device cuda --dtype bfloat16 --tokens 16384 \
  --embed-dim 1024 --ffn-dim 4096 --experts 16 --batch 16 --length 1024 --width 2048
suite_step train 220 \
  "fairseq-train: the eight systems at the gpu scale's equal FLOPs, bf16, batch 16 x 1024" \
  python benchmarks/train_throughput.py "$data" --scale gpu --batch-size 16 --updates 48 \
  --rounds 1 -- --bf16
suite_step profile 150 "one fairseq-train step of each system, profiled: bf16, batch 16 x 1024" \
  python benchmarks/train_step_profile.py "$data" --scale gpu --batch-size 16 -- --bf16
suite_step fsdp 140 "fully_sharded on one GPU (smlp_deterministic_tiny)" \
  python benchmarks/fully_sharded_gpu.py "$data" --gpus 1 --updates 6 \
  --archs smlp_deterministic_tiny
