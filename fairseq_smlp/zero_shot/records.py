"""Reading task records from user files in their public formats, and checking their fields.

A record is a dict of fields with its location ('copa.jsonl:3'), so that every complaint about
its content can name the line it came from.
"""

import csv
import io
import json
from pathlib import Path
from typing import List, Tuple

Record = Tuple[str, dict]  # (location, fields)


class RecordError(ValueError):
    """A record that does not hold what its task needs; the message names the field."""


def utf8_text(path: Path) -> str:
    """The file's text (a leading byte-order mark dropped); bytes that are not UTF-8 are an error
    that names their line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); the "
                          f"tasks' files are UTF-8") from None


def read_jsonl(path: Path) -> List[Record]:
    """One JSON object a line (blank lines skipped), as SuperGLUE and the tasks' authors ship."""
    records = []
    # Split on newlines only: JSON strings may hold other line separators (U+2028) as they are.
    for number, line in enumerate(utf8_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecordError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(fields, dict):
            raise RecordError(
                f"{path}:{number}: expected a JSON object a line, got {type(fields).__name__}"
            )
        records.append((f"{path}:{number}", fields))
    return records


def read_delimited(path: Path) -> List[Record]:
    """A CSV or TSV file with a header line (StoryCloze); tab-separated if the header holds a
    tab, else comma-separated."""
    text = utf8_text(path)
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = []
    for fields in reader:
        location = f"{path}:{reader.line_num}"
        if None in fields or None in fields.values():
            raise RecordError(
                f"{location}: the number of columns differs from the header's "
                f"{len(reader.fieldnames)} ({', '.join(reader.fieldnames)})"
            )
        records.append((location, fields))
    return records


def attach_labels(records: List[Record], labels_path: Path, field: str) -> List[Record]:
    """Set ``field`` of every record from a file of one label a line (PIQA ships its labels
    apart from the questions, in ``<split>-labels.lst``)."""
    labels = [line.strip() for line in utf8_text(labels_path).split("\n") if line.strip()]
    if len(labels) != len(records):
        raise RecordError(
            f"{labels_path} holds {len(labels)} labels for the {len(records)} records of its "
            f"data file; they must pair up line by line"
        )
    return [(location, {**fields, field: label}) for (location, fields), label in
            zip(records, labels)]


def text_field(fields: dict, name: str, parent: str = "") -> str:
    """``fields[name]``, a non-empty string; ``parent`` ('passage.') names the enclosing field."""
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field '{parent}{name}' must be a non-empty string; got {value!r}")
    return value


def list_field(fields: dict, name: str, item_type: type, parent: str = "") -> list:
    value = fields.get(name)
    if not isinstance(value, list) or not value or not all(
            isinstance(item, item_type) for item in value):
        raise RecordError(f"field '{parent}{name}' must be a non-empty list of "
                          f"{item_type.__name__}; got {value!r}")
    return value


def choice_field(fields: dict, name: str, count: int, first: int = 0) -> int:
    """The 0-based index of the right candidate, from a label numbered from ``first`` (an
    integer or its decimal string, as the tasks' files differ)."""
    value = fields.get(name)
    valid = list(range(first, first + count))
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        label = int(value)
    except ValueError:
        label = None
    if label not in valid:
        raise RecordError(f"field '{name}' is {value!r}; expected one of {valid} (a test split "
                          f"without labels cannot be scored)")
    return label - first
