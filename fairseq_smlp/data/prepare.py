"""Prepare a corpus for fairseq language modelling: split it into train / valid / test, train a
sentencepiece model on train, encode all three splits as space-separated pieces and binarize them
with ``fairseq-preprocess --only-source``.

Everything is built in a scratch directory beside --dest and moved into --dest only once every
step has succeeded, and only over what an earlier run wrote there: --dest must be new, empty or
hold nothing but the files that its prepare_data.manifest lists.

Used by examples/prepare_data.sh; run ``python -m fairseq_smlp.data.prepare --help``.
"""

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

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

# The list of the files a run wrote into --dest, which the next run may replace, and the name
# under which its next version is written before it takes the place of the last.
MANIFEST = "prepare_data.manifest"
NEXT_MANIFEST = MANIFEST + ".next"
MANIFEST_HEADER = (
    "# Written by examples/prepare_data.sh: the files it wrote into this directory, one a line.\n"
    "# A later run with this --dest replaces them; it refuses a --dest holding any other file.\n"
)
# sentencepiece skips longer lines of its training text without a word (and fails with an
# INTERNAL error when that leaves nothing), so longer paragraphs are refused beforehand.
MAX_LINE_BYTES = 1 << 16
# Files named in an error, before "and N more".
NAMED_FILES = 5
# sentencepiece reads --vocab-size as a 32-bit integer.
MAX_VOCAB_SIZE = 2**31 - 1


def load_splits(text_dir: Optional[Path], max_documents: int) -> Dict[str, List[Document]]:
    if text_dir is not None and has_ready_made_splits(text_dir):
        if max_documents > 0:
            raise ValueError(
                f"--max-documents {max_documents} keeps the first documents of a corpus split "
                f"by document, but --text-dir {text_dir} holds ready-made splits "
                f"({', '.join(SPLIT_FILES)}), which are taken whole: drop --max-documents, or "
                f"shorten those files")
        unused = sorted(path.name for path in text_dir.glob("*.txt")
                        if path.name not in SPLIT_FILES)
        if unused:
            logger.warning("--text-dir %s holds ready-made splits; its other *.txt files are "
                           "not used: %s", text_dir, ", ".join(unused))
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


def write_splits(splits: Dict[str, List[Document]], work: Path, vocab_size: int) -> None:
    """raw/, the sentencepiece model spm.* trained on raw/train.txt, and encoded/ in ``work``."""
    raw_dir, encoded_dir = work / "raw", work / "encoded"
    raw_dir.mkdir()
    encoded_dir.mkdir()
    for split, documents in splits.items():
        write_raw(documents, raw_dir / f"{split}.txt")

    model_prefix = work / "spm"
    train_sentencepiece(raw_dir / "train.txt", model_prefix, vocab_size)
    processor = spm.SentencePieceProcessor(model_file=f"{model_prefix}.model")
    for split, documents in splits.items():
        pieces = encode(processor, raw_dir / f"{split}.txt", encoded_dir / f"{split}.txt")
        words = sum(len(text.split()) for _, text in documents)
        logger.info(
            f"{split}: {len(documents)} documents, {words} words, {pieces} sentencepiece tokens"
        )


def binarize(work: Path) -> None:
    """fairseq-preprocess of work/encoded into work/bin."""
    encoded = work / "encoded"
    status = subprocess.run([
        sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
        "--trainpref", str(encoded / "train.txt"), "--validpref", str(encoded / "valid.txt"),
        "--testpref", str(encoded / "test.txt"), "--destdir", str(work / "bin"),
        "--workers", "2",
    ]).returncode
    if status != 0:
        raise ValueError(f"fairseq-preprocess failed with exit status {status}; its output is "
                         f"above")


# ----------------------------------------------------------------------------- --dest


def files_under(directory: Path) -> Set[str]:
    """Every file under ``directory`` as a '/'-separated path relative to it: all but
    directories, symbolic links included and not followed."""
    def unreadable(error: OSError):
        raise ValueError(f"--dest: cannot read {error.filename}: {error.strerror}")

    files = set()
    for root, dirs, names in os.walk(directory, onerror=unreadable):
        base = Path(root)
        for name in names + [name for name in dirs if (base / name).is_symlink()]:
            files.add((base / name).relative_to(directory).as_posix())
    return files


def listed_files(dest: Path) -> Set[str]:
    """The files that ``dest``'s MANIFEST lists; none without one."""
    manifest = dest / MANIFEST
    if not manifest.is_file():
        return set()
    try:
        text = manifest.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--dest {dest}: {manifest} is not the list an earlier run wrote (byte "
            f"{error.object[error.start]:#04x} at offset {error.start} is not UTF-8); give a new "
            f"or empty --dest, or move {manifest} out of it") from None
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def own_files(dest: Path) -> Set[str]:
    """The files in ``dest`` that an earlier run wrote, which a run may replace; any other file
    there is an error that names it."""
    if not dest.exists():
        blocking = next((path for path in dest.parents if path.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(f"--dest {dest}: {blocking} is a file, so no directory can be made "
                             f"under it; give a --dest whose parent directories are directories")
        return set()
    if not dest.is_dir():
        raise ValueError(f"--dest {dest} is a file; give a directory (new, empty or written by "
                         f"an earlier run)")
    found, listed = files_under(dest) - {MANIFEST, NEXT_MANIFEST}, listed_files(dest)
    others = sorted(found - listed)
    if others:
        files = f"{len(others)} files" if len(others) > 1 else "a file"
        more = f" and {len(others) - NAMED_FILES} more" if len(others) > NAMED_FILES else ""
        none = "" if (dest / MANIFEST).is_file() else " (there is none)"
        raise ValueError(
            f"--dest {dest} holds {files} that prepare_data did not write: "
            f"{', '.join(others[:NAMED_FILES])}{more}; it replaces only the files that "
            f"{dest / MANIFEST} lists from an earlier run{none}: give a new or empty --dest, or "
            f"move {'those files' if len(others) > 1 else 'that file'} out of it"
        )
    return found & listed


def write_manifest(dest: Path, files: Iterable[str]) -> None:
    """``dest``'s MANIFEST listing ``files``, replaced in one step."""
    staged = dest / NEXT_MANIFEST
    staged.write_text(MANIFEST_HEADER + "".join(f"{path}\n" for path in sorted(files)),
                      encoding="utf-8")
    os.replace(staged, dest / MANIFEST)


def install(work: Path, dest: Path) -> None:
    """Move every entry of ``work`` into ``dest``, over the files of an earlier run there. At
    every step the MANIFEST lists every file of either run that ``dest`` holds, so that a run cut
    off half-way leaves a ``dest`` that the next run replaces."""
    old = own_files(dest)  # again: a file may have come while the data was built
    new = files_under(work)
    dest.mkdir(parents=True, exist_ok=True)
    write_manifest(dest, old | new)
    for path in sorted(old - new):
        (dest / path).unlink()
    for entry in sorted({path.split("/")[0] for path in new}):
        target = dest / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        shutil.move(work / entry, target)  # a copy where --dest is another file system
    write_manifest(dest, new)


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, required=True,
        help=f"output directory: new, empty or written by an earlier run (its {MANIFEST} lists "
        f"what that run wrote, which this one replaces)",
    )
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
    if not 16 <= args.vocab_size <= MAX_VOCAB_SIZE:
        parser.error(f"--vocab-size must be from 16 to {MAX_VOCAB_SIZE}; got {args.vocab_size}")
    if args.max_documents < 0:
        parser.error(f"--max-documents must be 0 (all) or more; got {args.max_documents}")
    return args


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    args = parse_args(argv)
    # Terminated, a run unwinds as a failed one does, taking its scratch directory with it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        prepare(args)
    except (ValueError, OSError) as error:
        sys.exit(f"prepare_data: {error}")


def prepare(args: argparse.Namespace) -> None:
    """Check --dest and the corpus, build everything in a scratch directory beside --dest and
    move it in once complete; a failed run leaves --dest as it was."""
    own_files(args.dest)  # before any work: a --dest holding other files is refused at once
    splits = load_splits(args.text_dir, args.max_documents)
    parent = args.dest.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare.", dir=parent))
    try:
        write_splits(splits, work, args.vocab_size)
        binarize(work)
        install(work, args.dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
