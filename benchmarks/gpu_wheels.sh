#!/usr/bin/env bash
# The Python packages a GPU machine with Python 3.12 and a CUDA torch but neither fairseq nor a
# reachable package registry lacks, as wheels in .whl/ (ignored by git), fetched where the
# registry is reachable: cp312 builds of the compiled ones, local builds of the pure-Python
# source-only ones.
# Carry .whl (and data/sotu/bin) and begin the command there with:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#
# then, e.g., `bash benchmarks/gpu_suite.sh data/sotu/bin`. Versions: those this package's
# install resolves to here.
#
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  ve-fairseq==0.12.3 hydra-core==1.3.8 omegaconf==2.3.1 bitarray==3.12.3
python3 -m pip wheel -q --no-deps -w .whl fairscale==0.4.13 antlr4-python3-runtime==4.9.3
ls .whl
du -sh .whl
