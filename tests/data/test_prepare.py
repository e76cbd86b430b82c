"""examples/prepare_data.sh on bad corpora and --dest directories: every split and --dest are
checked before anything is written, a failed run leaves an earlier --dest exactly as it was, and
a run replaces no file but those an earlier run wrote."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairseq_smlp.data.prepare import main as prepare_main

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


def refusal(*argv) -> str:
    """The message with which python -m fairseq_smlp.data.prepare stops."""
    with pytest.raises(SystemExit) as exit_info:
        prepare_main([str(arg) for arg in argv])
    return exit_info.value.code


def scratch_left(directory: Path):
    return [p.name for p in directory.iterdir() if p.name.startswith(".prepare")]


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


@pytest.mark.parametrize("present,holds,add", [
    (["train.txt", "valid.txt"], "train.txt and valid.txt but no test.txt", "test.txt"),
    (["train.txt"], "train.txt but no valid.txt or test.txt", "valid.txt and test.txt"),
])
def test_some_but_not_all_ready_made_splits_are_refused(tmp_path, present, holds, add):
    """Split by document, the user's train.txt would land in any split."""
    text = tmp_path / "text"
    text.mkdir()
    for name in present + ["README.txt", "notes.txt"]:
        (text / name).write_text(GOOD)
    before = fingerprint(text)
    assert refusal("--dest", tmp_path / "dest", "--text-dir", text) == (
        f"prepare_data: --text-dir {text} holds {holds}: ready-made splits need all three of "
        f"train.txt, valid.txt, test.txt, and a directory with none of them is split by "
        f"document, each *.txt file one document; add {add}, or rename {' and '.join(present)} "
        f"to have the directory split by document")
    assert fingerprint(text) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]


def test_a_train_line_over_sentencepieces_limit_is_named(tmp_path):
    """Three documents split by document: c.txt is the train split. Its line 1 is at the limit
    of 65,536 bytes; line 3, 32,769 two-byte characters, is over it (sentencepiece would leave it
    out, or fail with an INTERNAL error were it the only line)."""
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text(GOOD)
    (text / "b.txt").write_text(GOOD)
    (text / "c.txt").write_text("x" * 65536 + "\nThey spoke.\n" + "é" * 32769 + "\n" + GOOD)
    before = fingerprint(text)
    assert refusal("--dest", tmp_path / "dest", "--text-dir", text) == (
        f"prepare_data: {text / 'c.txt'}:3: the line is 65538 bytes long, over sentencepiece's "
        f"limit of 65536 bytes a line (it would leave the line out of its training); split it "
        f"into lines of at most 65536 bytes, such as one paragraph a line")
    assert fingerprint(text) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]


# What a run writes into --dest, as its manifest lists it.
MANIFEST = "prepare_data.manifest"
OUTPUTS = [
    "bin/dict.txt", "bin/preprocess.log", "bin/test.bin", "bin/test.idx", "bin/train.bin",
    "bin/train.idx", "bin/valid.bin", "bin/valid.idx", "encoded/test.txt", "encoded/train.txt",
    "encoded/valid.txt", "raw/test.txt", "raw/train.txt", "raw/valid.txt", "spm.model",
    "spm.vocab",
]


def listed(dest: Path):
    return [line for line in (dest / MANIFEST).read_text().splitlines()
            if not line.startswith("#")]


def test_a_rerun_replaces_its_own_earlier_output(data_dir, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(data_dir.parent, dest)  # an earlier run's output: 12 speeches, 300 pieces
    assert listed(dest) == OUTPUTS
    text = corpus(tmp_path / "text")
    (text / "extra.txt").write_text(GOOD)  # beside ready-made splits: named, left out
    result = prepare(dest, text, "--vocab-size", "23")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"--text-dir {text} holds ready-made splits; its other *.txt files are not used: "
            f"extra.txt") in result.stderr
    assert sorted(fingerprint(dest)) == sorted(OUTPUTS + [MANIFEST])
    assert listed(dest) == OUTPUTS
    assert (dest / "raw" / "train.txt").read_text() == GOOD + "\n"  # a document, then a blank
    assert len((dest / "spm.vocab").read_text().splitlines()) == 23
    assert scratch_left(tmp_path) == []


def test_a_dest_holding_files_it_did_not_write_is_refused_and_kept(data_dir, tmp_path):
    dest = tmp_path / "dest"
    shutil.copytree(data_dir.parent, dest)
    (dest / "bin" / "myscript.sh").write_text("echo mine\n")
    (dest / "notes.md").write_text("my notes\n")
    before = fingerprint(dest)
    result = prepare(dest, corpus(tmp_path / "text"), "--vocab-size", "23")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"prepare_data: --dest {dest} holds 2 files that prepare_data did not write: "
        f"bin/myscript.sh, notes.md; it replaces only the files that {dest / MANIFEST} lists "
        f"from an earlier run: give a new or empty --dest, or move those files out of it")
    assert fingerprint(dest) == before
    assert scratch_left(tmp_path) == []


def test_a_home_directory_as_dest_is_refused_and_kept(tmp_path):
    home = tmp_path / "home"
    for name in ("bin/myscript.sh", "bin/tool", ".bashrc", "notes.md", "raw/draft.txt",
                 "spm.model", "projects/a/main.py"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(f"{name}\n")
    (home / "link").symlink_to(home / "projects")  # named, not followed
    before = fingerprint(home)
    message = refusal("--dest", home, "--text-dir", corpus(tmp_path / "text"))
    assert message == (
        f"prepare_data: --dest {home} holds 8 files that prepare_data did not write: .bashrc, "
        f"bin/myscript.sh, bin/tool, link, notes.md and 3 more; it replaces only the files that "
        f"{home / MANIFEST} lists from an earlier run (there is none): give a new or empty "
        f"--dest, or move those files out of it")
    assert fingerprint(home) == before and (home / "link").is_symlink()
    assert scratch_left(tmp_path) == []


@pytest.mark.parametrize("flags,message", [
    # Before: all documents prepared, as with 0; sentencepiece's "cannot parse ... as int".
    (["--max-documents", "-3"], "--max-documents must be 0 (all) or more; got -3"),
    (["--vocab-size", "99999999999"], "--vocab-size must be from 16 to 2147483647; got "
     "99999999999"),
])
def test_numbers_out_of_range_are_refused_by_the_parser(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--dest", str(tmp_path / "dest"), *flags])
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_dest_below_a_file_is_named(tmp_path):
    (tmp_path / "notes").write_text("kept\n")
    message = refusal("--dest", tmp_path / "notes" / "data", "--text-dir",
                      corpus(tmp_path / "text"))
    assert message == (f"prepare_data: --dest {tmp_path}/notes/data: {tmp_path}/notes is a file, "
                       f"so no directory can be made under it; give a --dest whose parent "
                       f"directories are directories")
    assert (tmp_path / "notes").read_text() == "kept\n"


@pytest.mark.parametrize("argv", [["--dest"], ["--dest", ""], ["--vocab-size"]])
def test_an_option_without_its_value_is_named_by_the_script(argv):
    result = subprocess.run(["bash", "examples/prepare_data.sh", *argv], cwd=REPO, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"prepare_data.sh: {argv[0]} needs a value (usage: see the "
                                    f"top of examples/prepare_data.sh)")


def test_max_documents_with_ready_made_splits_is_refused(tmp_path):
    """Ready-made splits are taken whole: --max-documents was silently ignored there."""
    text = corpus(tmp_path / "text")
    assert refusal("--dest", tmp_path / "dest", "--text-dir", text, "--max-documents", 2) == (
        f"prepare_data: --max-documents 2 keeps the first documents of a corpus split by "
        f"document, but --text-dir {text} holds ready-made splits (train.txt, valid.txt, "
        f"test.txt), which are taken whole: drop --max-documents, or shorten those files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]


def test_a_manifest_that_is_not_utf8_is_named(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / MANIFEST).write_bytes(b"bin/dict.txt\n\xff\xfe\n")
    message = refusal("--dest", dest, "--text-dir", corpus(tmp_path / "text"))
    assert message == (
        f"prepare_data: --dest {dest}: {dest / MANIFEST} is not the list an earlier run wrote "
        f"(byte 0xff at offset 13 is not UTF-8); give a new or empty --dest, or move "
        f"{dest / MANIFEST} out of it")


def test_a_terminated_run_leaves_no_scratch_directory(tmp_path):
    """SIGTERM while the bundled corpus is being prepared (sentencepiece trains for seconds)."""
    run = subprocess.Popen([sys.executable, "-m", "fairseq_smlp.data.prepare", "--dest",
                            str(tmp_path / "dest")], cwd=REPO, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not scratch_left(tmp_path):
        assert run.poll() is None, "the run ended before it made its scratch directory"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == []
