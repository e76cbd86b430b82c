"""examples/prepare_data.sh on bad corpora: every split is checked before anything is written,
and a failed run leaves an earlier --dest exactly as it was."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
GOOD = "The people met.\nThey spoke of the union.\nThen they left.\n"


def prepare(dest, text_dir, *flags):
    return subprocess.run(["bash", "examples/prepare_data.sh", "--dest", str(dest), "--text-dir",
                           str(text_dir), *flags], cwd=REPO, env=ENV, capture_output=True,
                          text=True)


def corpus(directory: Path, **splits) -> Path:
    """train.txt, valid.txt and test.txt in ``directory``, GOOD unless given (str or bytes)."""
    directory.mkdir()
    for name in ["train", "valid", "test"]:
        text = splits.get(name, GOOD)
        path = directory / f"{name}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return directory


def fingerprint(directory: Path):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_bad_corpus_leaves_an_existing_dest_as_it_was(data_dir, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(data_dir.parent, dest)  # an earlier, successful run
    before = fingerprint(dest)
    bad = corpus(tmp_path / "bad", train=GOOD.encode() + b"Caf\xe9 au lait.\n")
    result = prepare(dest, bad)
    assert result.returncode != 0
    assert f"{bad / 'train.txt'}:4: byte 0xe9 at column 4 is not UTF-8" in result.stderr
    assert fingerprint(dest) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prepare")] == []


def test_an_empty_split_is_refused_before_anything_is_written(tmp_path):
    result = prepare(tmp_path / "dest", corpus(tmp_path / "text", valid="\n  \n"))
    assert result.returncode != 0
    assert "the valid split holds no text" in result.stderr
    assert not (tmp_path / "dest").exists()


def test_a_vocabulary_too_large_for_the_train_split_is_refused(tmp_path):
    result = prepare(tmp_path / "dest", corpus(tmp_path / "text"), "--vocab-size", "4096")
    assert result.returncode != 0
    assert ("sentencepiece could not train a --vocab-size 4096 vocabulary on the train split: "
            "it gives at most 23 pieces: use --vocab-size 23 or less") in result.stderr, \
        result.stderr[-2000:]
    assert not (tmp_path / "dest").exists()
