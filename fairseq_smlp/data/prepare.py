"""Split a corpus into train / valid / test, train a sentencepiece model on train and encode all
three splits as space-separated pieces, ready for ``fairseq-preprocess --only-source``.

Used by examples/prepare_data.sh; run ``python -m fairseq_smlp.data.prepare --help``.
"""

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

import sentencepiece as spm

from .documents import (
    SPLIT_FILES,
    Document,
    check_splits,
    paragraphs,
    read_text,
    sotu_documents,
    split_documents,
    text_dir_documents,
)

logger = logging.getLogger("fairseq_smlp.data.prepare")

# sentencepiece skips longer lines of its training text without a word (and fails with an
# INTERNAL error when that leaves nothing), so longer paragraphs are refused beforehand.
MAX_LINE_BYTES = 1 << 16


def load_splits(text_dir: Optional[Path], max_documents: int) -> Dict[str, List[Document]]:
    if text_dir is not None and has_ready_made_splits(text_dir):
        splits = {Path(name).stem: [(Path(name).stem, read_text(text_dir / name))]
                  for name in SPLIT_FILES}
    else:
        documents = sotu_documents() if text_dir is None else text_dir_documents(text_dir)
        if max_documents > 0:
            documents = documents[:max_documents]
        splits = split_documents(documents)
    check_splits(splits, f"--text-dir {text_dir}" if text_dir else "the bundled corpus")
    check_line_lengths(splits["train"], text_dir)
    return splits


def has_ready_made_splits(text_dir: Path) -> bool:
    """Whether ``text_dir`` holds all of SPLIT_FILES; some of them but not all is an error, for
    the directory would be split by document with a user's train.txt in any split."""
    present = [name for name in SPLIT_FILES if (text_dir / name).is_file()]
    if len(present) in (0, len(SPLIT_FILES)):
        return bool(present)
    missing = [name for name in SPLIT_FILES if name not in present]
    raise ValueError(
        f"--text-dir {text_dir} holds {' and '.join(present)} but no {' or '.join(missing)}: "
        f"ready-made splits need all three of {', '.join(SPLIT_FILES)}, and a directory with "
        f"none of them is split by document, each *.txt file one document; add "
        f"{' and '.join(missing)}, or rename {' and '.join(present)} to have the directory split "
        f"by document"
    )


def check_line_lengths(documents: List[Document], text_dir: Optional[Path]) -> None:
    """Every paragraph that sentencepiece trains on (a line of raw/train.txt) within
    MAX_LINE_BYTES; a longer one is an error naming its file:line."""
    for name, text in documents:
        for number, line in enumerate(text.split("\n"), start=1):
            for paragraph in paragraphs(line):
                size = len(paragraph.encode("utf-8"))
                if size > MAX_LINE_BYTES:
                    where = (f"{text_dir / name}.txt:{number}" if text_dir is not None
                             else f"the bundled corpus's {name}, line {number}")
                    raise ValueError(
                        f"{where}: the line is {size} bytes long, over sentencepiece's limit of "
                        f"{MAX_LINE_BYTES} bytes a line (it would leave the line out of its "
                        f"training); split it into lines of at most {MAX_LINE_BYTES} bytes, such "
                        f"as one paragraph a line"
                    )


def write_raw(documents: List[Document], path: Path) -> None:
    """One paragraph a line and an empty line after each document, so that fairseq's
    ``--sample-break-mode complete_doc`` sees the document boundaries."""
    with path.open("w", encoding="utf-8") as out:
        for _, text in documents:
            for paragraph in paragraphs(text):
                out.write(paragraph + "\n")
            out.write("\n")


def train_sentencepiece(train_file: Path, model_prefix: Path, vocab_size: int) -> None:
    # sentencepiece refuses, for one, a vocabulary larger than a small train split can give
    # ("Vocabulary size is too high (4096). Please set it to a value <= 301.").
    try:
        spm.SentencePieceTrainer.train(
            input=str(train_file),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            character_coverage=1.0,
            max_sentence_length=MAX_LINE_BYTES,  # transcripts hold paragraphs of several KB
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:
        limit = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)",
                          str(error))
        reason = (f"it gives at most {limit.group(1)} pieces: use --vocab-size {limit.group(1)} "
                  f"or less, or more training text" if limit else str(error).strip())
        raise ValueError(f"sentencepiece could not train a --vocab-size {vocab_size} "
                         f"vocabulary on the train split: {reason}") from None


def encode(processor: spm.SentencePieceProcessor, source: Path, target: Path) -> int:
    count = 0
    with source.open(encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
        for line in lines:
            pieces = processor.encode(line.rstrip("\n"), out_type=str)
            count += len(pieces)
            out.write(" ".join(pieces) + "\n")
    return count


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--text-dir",
        type=Path,
        help="your own corpus instead of the bundled one: a directory holding train.txt, "
        "valid.txt and test.txt, or else none of them and any *.txt files, one document each, "
        "split by document",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=4096, help="sentencepiece vocabulary size"
    )
    parser.add_argument(
        "--max-documents",
        type=int,
        default=0,
        help="keep only the first N documents in name order before splitting (0: all)",
    )
    args = parser.parse_args(argv)
    if args.vocab_size < 16:
        parser.error(f"--vocab-size must be at least 16; got {args.vocab_size}")
    return args


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    args = parse_args(argv)
    try:
        prepare(args)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"prepare_data: {error}")


def prepare(args: argparse.Namespace) -> None:
    splits = load_splits(args.text_dir, args.max_documents)
    raw_dir, encoded_dir = args.dest / "raw", args.dest / "encoded"
    raw_dir.mkdir(parents=True, exist_ok=True)
    encoded_dir.mkdir(parents=True, exist_ok=True)
    for split, documents in splits.items():
        write_raw(documents, raw_dir / f"{split}.txt")

    model_prefix = args.dest / "spm"
    train_sentencepiece(raw_dir / "train.txt", model_prefix, args.vocab_size)
    processor = spm.SentencePieceProcessor(model_file=f"{model_prefix}.model")
    for split, documents in splits.items():
        pieces = encode(processor, raw_dir / f"{split}.txt", encoded_dir / f"{split}.txt")
        words = sum(len(text.split()) for _, text in documents)
        logger.info(
            f"{split}: {len(documents)} documents, {words} words, {pieces} sentencepiece tokens"
        )


if __name__ == "__main__":
    main()
