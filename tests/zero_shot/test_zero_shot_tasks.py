"""Each task's public format becomes the candidates docs/zero_shot.md describes; malformed
records name their line and field."""

import json
from pathlib import Path

import pytest

from fairseq_smlp.zero_shot.example import Candidate
from fairseq_smlp.zero_shot.records import RecordError
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples

DATA = Path(__file__).parent / "data"
FILES = {"copa": "copa.jsonl", "piqa": "piqa.jsonl", "winogrande": "winogrande.jsonl",
         "hellaswag": "hellaswag.jsonl", "storycloze": "storycloze.csv", "record": "record.jsonl"}


def shipped(task):
    return load_examples(TASKS[task], DATA / FILES[task])


def test_copa_joins_premise_and_choice_with_the_connective():
    examples = shipped("copa")
    assert [e.gold for e in examples] == [{0}, {1}, {0}, {0}]
    context = "The lamp in the hallway went dark because"
    assert examples[0].candidates == (Candidate(context, " the bulb burned out."),
                                      Candidate(context, " the door was painted blue."))
    assert examples[1].candidates[1] == Candidate(
        "The baker left the bread in the oven too long therefore", " the crust turned black.")
    # 'I' keeps its capital.
    assert examples[2].candidates[1].continuation == " I had lost my keys."
    assert examples[0].location == f"{DATA / 'copa.jsonl'}:1"


def test_piqa_takes_its_labels_from_the_labels_file():
    examples = shipped("piqa")
    assert [e.gold for e in examples] == [{0}, {1}, {0}, {0}]
    assert examples[1].candidates[1] == Candidate(
        "Question: To loosen a stuck jar lid,\nAnswer:",
        " run the lid under hot water for a minute, then twist.")


def test_winogrande_scores_the_suffix_after_the_filled_blank():
    examples = shipped("winogrande")
    assert [e.gold for e in examples] == [{0}, {1}, {1}, {1}]
    assert examples[0].candidates == (
        Candidate("The suitcase would not fit in the car trunk because the suitcase",
                  " was too large."),
        Candidate("The suitcase would not fit in the car trunk because the trunk",
                  " was too large."),
    )
    assert examples[3].candidates[1] == Candidate(
        "The governor thanked the mayor after mayor", "'s speech praised the new bridge.")


def test_hellaswag_is_cleaned_and_prefixed_with_the_activity():
    examples = shipped("hellaswag")
    assert [e.gold for e in examples] == [{2}, {0}, {1}, {3}]
    assert examples[0].candidates[2] == Candidate(
        "Washing dishes: A man fills a sink with soapy water. He",
        " scrubs each plate with a sponge and rinses it.")
    assert examples[2].candidates[1] == Candidate(
        "Home and Garden: How to clean a window. Mix water and vinegar in a bucket.",
        " Wipe the glass with a soft cloth dipped in the mixture.")


def test_story_cloze_reads_csv_and_tsv():
    examples = shipped("storycloze")
    assert [e.gold for e in examples] == [{0}, {1}, {0}]
    assert examples[1].candidates[1] == Candidate(
        "Anna's old bicycle had a flat tire. She could not ride it to school. Her father showed "
        "her how to patch the tube. They pumped the tire full of air, together.",
        " Anna rode her bicycle to school the next day.")
    assert examples[1].location.endswith("storycloze.csv:3")


def test_story_cloze_tsv(tmp_path):
    rows = (DATA / "storycloze.csv").read_text().splitlines()
    tsv = tmp_path / "val.tsv"
    tsv.write_text("\n".join(rows[:2]).replace(",", "\t") + "\n")
    [example] = load_examples(TASKS["storycloze"], tsv)
    assert example.candidates[0] == Candidate(
        "Tom wanted to bake a cake for his sister. He bought flour and eggs at the store. He "
        "mixed everything in a large bowl. He baked the cake for half an hour.",
        " His sister loved the cake.")


def test_record_substitutes_every_entity_and_accepts_every_gold_mention():
    examples = shipped("record")
    assert len(examples) == 3  # one per query
    passage = ("Harbor City opened its new library on Monday. Mayor Ellen Park cut the ribbon "
               "while children from Lakeside School sang. The building, designed by Ruiz "
               "Studio, holds two hundred thousand books.\n- The library cost the city twelve "
               "million dollars\n- Lakeside School children sang at the opening\n")
    entities = ["Harbor City", "Ellen Park", "Lakeside School", "Ruiz Studio", "Park"]
    assert examples[0].candidates == tuple(
        Candidate(passage, f"- Architects from {name} drew the plans for the building.")
        for name in entities)
    assert [e.gold for e in examples] == [{3}, {1, 4}, {1}]


def write(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


COPA_GOOD = json.dumps({"premise": "It rained.", "choice1": "A.", "choice2": "B.",
                        "question": "effect", "label": 0})


@pytest.mark.parametrize("line, message", [
    ('{"premise": "It rained.",', r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected a JSON object a line, got list"),
    (json.dumps({"premise": "It rained.", "choice1": "A.", "question": "cause", "label": 0}),
     r"bad\.jsonl:2: field 'choice2' must be a non-empty string; got None \(copa records: "),
    (COPA_GOOD.replace('"effect"', '"reason"'),
     r"bad\.jsonl:2: field 'question' is 'reason'; expected 'cause' or 'effect'"),
    (COPA_GOOD.replace('"label": 0', '"label": 2'),
     r"bad\.jsonl:2: field 'label' is 2; expected one of \[0, 1\]"),
])
def test_malformed_copa_lines_name_the_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", [COPA_GOOD, line])
    with pytest.raises(RecordError, match=message):
        load_examples(TASKS["copa"], path)


@pytest.mark.parametrize("task, fields, message", [
    ("winogrande", {"sentence": "No blank here.", "option1": "a", "option2": "b", "answer": "1"},
     r":1: field 'sentence' must hold exactly one '_'"),
    ("winogrande", {"sentence": "It was _ ", "option1": "a", "option2": "b", "answer": "1"},
     r":1: field 'sentence' has nothing after the blank"),
    ("winogrande", {"sentence": "A _ b.", "option1": "a", "option2": "b", "answer": ""},
     r":1: field 'answer' is ''; expected one of \[1, 2\] \(a test split"),
    ("hellaswag", {"ctx": "A man.", "endings": "one ending", "label": 0},
     r":1: field 'endings' must be a non-empty list of str"),
    ("hellaswag", {"ctx": "A man.", "endings": ["a", "b", "c", "d"], "label": "4"},
     r":1: field 'label' is '4'; expected one of \[0, 1, 2, 3\]"),
    ("record", {"passage": {"text": "Ann met Bo.", "entities": [{"start": 0, "end": 11}]},
                "qas": [{"query": "@placeholder left.", "answers": [{"text": "Ann"}]}]},
     r":1: field 'passage.entities\[0\]' is .*; expected character offsets 0 <= start <= end "
     r"< 11"),
    ("record", {"passage": {"text": "Ann met Bo.", "entities": [{"start": 0, "end": 2}]},
                "qas": [{"query": "She left.", "answers": [{"text": "Ann"}]}]},
     r":1: field 'qas\[0\].query' holds no @placeholder"),
    ("record", {"passage": {"text": "Ann met Bo.", "entities": [{"start": 0, "end": 2}]},
                "qas": [{"query": "@placeholder left.", "answers": [{"text": "Bo"}]}]},
     r":1: field 'qas\[0\].answers' names none of the passage's entities: \['Bo'\]"),
])
def test_malformed_records_name_the_field(tmp_path, task, fields, message):
    path = write(tmp_path / "bad.jsonl", [json.dumps(fields)])
    with pytest.raises(RecordError, match=message):
        load_examples(TASKS[task], path)


@pytest.mark.parametrize("task, name", [("copa", "bad.jsonl"), ("storycloze", "bad.csv")])
def test_bytes_that_are_not_utf8_name_their_line(tmp_path, task, name):
    lines = (DATA / ("copa.jsonl" if task == "copa" else "storycloze.csv")).read_bytes()
    first, second, rest = lines.split(b"\n", 2)
    path = tmp_path / name
    path.write_bytes(b"\n".join([first, second.replace(b"e", b"\xff", 1), rest]))
    with pytest.raises(RecordError, match=rf"{name}:2: not UTF-8 text \(byte 0xff\)"):
        load_examples(TASKS[task], path)


def test_short_story_cloze_row_names_its_line(tmp_path):
    rows = (DATA / "storycloze.csv").read_text().splitlines()
    path = write(tmp_path / "val.csv", rows[:3] + [rows[3].rsplit(",", 2)[0]])
    with pytest.raises(RecordError, match=r"val\.csv:4: the number of columns differs from the "
                                          r"header's 8"):
        load_examples(TASKS["storycloze"], path)


def test_piqa_labels_must_pair_up_and_exist(tmp_path):
    questions = (DATA / "piqa.jsonl").read_text().splitlines()
    path = write(tmp_path / "valid.jsonl", questions)
    with pytest.raises(FileNotFoundError, match=r"have no 'label' field and there is no "
                                                r"labels file .*valid-labels\.lst: give one"):
        load_examples(TASKS["piqa"], path)
    write(tmp_path / "valid-labels.lst", ["0", "1"])
    with pytest.raises(RecordError, match=r"valid-labels\.lst holds 2 labels for the 4 records"):
        load_examples(TASKS["piqa"], path)
    labels = write(tmp_path / "other.lst", ["1", "1", "1", "x"])
    with pytest.raises(RecordError, match=r"valid\.jsonl:4: field 'label' is 'x'"):
        load_examples(TASKS["piqa"], path, labels)


def test_tasks_without_shipped_data_need_a_file(tmp_path):
    with pytest.raises(ValueError, match="--task storycloze ships in no package: give its data "
                                         "with --data"):
        load_examples(TASKS["storycloze"])
    with pytest.raises(ValueError, match="--labels is for tasks whose labels ship apart"):
        load_examples(TASKS["copa"], DATA / "copa.jsonl", DATA / "piqa-labels.lst")
    with pytest.raises(FileNotFoundError, match="--data .*missing.jsonl does not exist"):
        load_examples(TASKS["record"], tmp_path / "missing.jsonl")
