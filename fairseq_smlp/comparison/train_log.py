"""Reading one fairseq-train log: its validation curve, updates, wall-clock and training tokens.

What fairseq's JSON progress lines hold (fairseq/logging/progress_bar.py, fairseq_cli/train.py):
``train_inner`` every --log-interval updates, with the averages over those updates (``wpb``:
tokens per update) and ``wall``, the seconds since the trainer was built (start-up, validation
and checkpoints included); ``train`` at the end of each epoch (and at a stop), with the epoch's
averages and every key prefixed ``train_``, so that fairseq's ``wall`` is ``train_wall`` there;
``valid`` after each validation, with ``valid_ppl`` (2 ** the base-2 loss) and
``valid_num_updates`` but no time. Partial-prediction runs count and score only the trailing
--prediction-fraction of each block, in ``wpb`` as in ``valid_ppl``.

A run cut off and resumed from a checkpoint appends a second run's lines to the same log, which
starts with fairseq's "Loaded checkpoint ... (epoch E @ K updates)": the log is read as one run,
what the first run logged past update K (redone by the second) dropped. The second run's time
continues from the first's at update K, counted by the lines' time stamps from the "Loaded
checkpoint" line: its own ``wall`` does not count (restored from a mid-epoch checkpoint, fairseq's
stopwatch stays at 0).
"""

import bisect
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..partial_prediction import DEFAULT_PREDICTION_FRACTION

# `<date> <time> | INFO | <tag> | {json}`: JsonProgressBar's lines, tagged by what they report.
PROGRESS_LINE = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
# fairseq_cli.train's last line, written once training has ended normally.
DONE_LINE = re.compile(r"\| fairseq_cli\.train \| done training in ")
# fairseq's logging prefix: `<date> <time> | <level> | <logger> | ...`, to the second.
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \|")
# fairseq_cli.train's line once an update is done and its validation starts.
BEGIN_VALIDATION = re.compile(r"\| fairseq_cli\.train \| begin validation on ")
# fairseq_cli.train's dump of its whole configuration, which holds the task's options.
PREDICTION_FRACTION = re.compile(r"'prediction_fraction': ([0-9.eE+-]+)")
# fairseq's line once it has restored a checkpoint to resume from.
RESUMED = re.compile(r"\| Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)")
# fairseq_cli.eval_lm's last line: the mean base-2 loss per scored token, to four decimals
# ('nan' or 'inf' for a model that diverged).
EVAL_LM_LOSS = re.compile(r"Loss \(base 2\): (\d+(?:\.\d*)?|nan|inf), Perplexity: ")


class ReportError(ValueError):
    """A run directory, log or system.json the report cannot read; the message says why."""


def read_json_object(path: Path, how: str) -> dict:
    """The JSON object in ``path``; else a ReportError ending with ``how`` to write it."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: not JSON ({error}); {how}") from error
    except OSError as error:
        raise ReportError(f"{path}: cannot be read ({error.strerror}); {how}") from error
    if not isinstance(record, dict):
        raise ReportError(f"{path}: holds {type(record).__name__}, not a JSON object; {how}")
    return record


@dataclass(frozen=True)
class ProgressLine:
    """A train_inner or train line: where training stood when it was written."""

    tag: str
    num_updates: int
    wall: float  # fairseq's `wall`: seconds since the trainer was built
    tokens_per_update: float  # fairseq's `wpb`, averaged over the updates the line covers
    stamp: Optional[float] = None  # the line's own time (POSIX seconds), if it has one
    where: str = ""  # file:line, for errors


@dataclass(frozen=True)
class ValidationBegins:
    stamp: Optional[float]  # the "begin validation" line's time


@dataclass(frozen=True)
class ValidLine:
    num_updates: int
    ppl: float


@dataclass(frozen=True)
class Done:
    """fairseq's "done training" line."""


@dataclass(frozen=True)
class PredictionFraction:
    value: float  # the task's --prediction-fraction, from the configuration dump


@dataclass(frozen=True)
class Resumed:
    num_updates: int  # the update of the checkpoint the run resumed from
    stamp: Optional[float]  # the "Loaded checkpoint" line's time


Event = Union[ProgressLine, ValidationBegins, ValidLine, Done, PredictionFraction, Resumed]


@dataclass(frozen=True)
class ValidPoint:
    num_updates: int
    seconds: float  # fairseq's `wall` when its validation began (see validation_start)
    ppl: float


@dataclass(frozen=True)
class TrainLog:
    """What one fairseq-train log says about its run."""

    valid: List[ValidPoint]
    num_updates: int
    seconds: float
    train_tokens: float
    tokens_per_second: Optional[float]  # train_tokens over the wall of the line they run up to
    complete: bool  # the log ends with fairseq's "done training" line
    prediction_fraction: float  # the task's --prediction-fraction; unused by other tasks


def read_train_log(path: Path) -> TrainLog:
    if path.is_dir():
        raise ReportError(f"{path}: a directory; it must be fairseq-train's output (stdout and "
                          f"stderr) for this system, run with --log-format json")
    if not path.is_file():
        raise ReportError(
            f"{path}: missing; it is fairseq-train's output (stdout and stderr) for this system, "
            f"run with --log-format json"
        )
    events = one_run(read_events(path))
    progress = [event for event in events if isinstance(event, ProgressLine)]
    check_one_run(progress)
    valid = validations(events)
    if not valid:
        raise ReportError(
            f"{path}: no validation line ('| valid | {{...}}' with valid_ppl); fairseq-train "
            f"writes one after every validation, at each --validate-interval-updates and each "
            f"epoch's end, when run with --log-format json and without --disable-validation"
        )
    if not progress:
        raise ReportError(
            f"{path}: no training line ('| train_inner | {{...}}' or '| train | {{...}}') to "
            f"time its validations by; fairseq-train writes train_inner every --log-interval "
            f"updates and train at each epoch's end, when run with --log-format json"
        )
    points = [ValidPoint(line.num_updates, validation_start(progress, line.num_updates, began),
                         line.ppl) for line, began in valid]
    tokens = training_tokens(progress)
    fractions = [event.value for event in events if isinstance(event, PredictionFraction)]
    return TrainLog(
        valid=points,
        num_updates=max(progress[-1].num_updates, points[-1].num_updates),
        seconds=max(progress[-1].wall, points[-1].seconds),
        train_tokens=tokens,
        tokens_per_second=tokens / progress[-1].wall if progress[-1].wall > 0 else None,
        complete=any(isinstance(event, Done) for event in events),
        prediction_fraction=fractions[-1] if fractions else DEFAULT_PREDICTION_FRACTION,
    )


def read_events(path: Path) -> List[Event]:
    """The lines of the log the report reads, in order, as events."""
    events: List[Event] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        events.extend(line_events(line, f"{path}:{number}"))
    return events


def one_run(events: Sequence[Event]) -> List[Event]:
    """The events of a log that resumed runs appended to, as those of one run (module
    docstring)."""
    kept: List[Event] = []
    resumed: Optional[Resumed] = None
    offset = 0.0  # the time at the update the latest run resumed from
    for event in events:
        if isinstance(event, Resumed):
            redone = next((i for i, e in enumerate(kept) if isinstance(e, (ProgressLine, ValidLine))
                           and e.num_updates > event.num_updates), len(kept))
            kept = kept[:redone]
            progress = [e for e in kept if isinstance(e, ProgressLine)]
            # The time at the checkpoint's update, or that of the last line before the cut if
            # later (a run stopped at the checkpoint writes its train line after validating).
            offset = max([wall_clock_at(progress, event.num_updates)]
                         + [e.wall for e in progress]) if progress else 0.0
            resumed = event
        elif isinstance(event, ProgressLine) and resumed is not None:
            if event.stamp is None or resumed.stamp is None:
                raise ReportError(
                    f"{event.where}: a resumed run's line without a time stamp; the report times "
                    f"a resumed run by fairseq's logging time stamps, which its log lines carry")
            kept.append(dataclasses.replace(event, wall=offset + event.stamp - resumed.stamp))
        else:
            kept.append(event)
    return kept


def line_events(line: str, where: str) -> List[Event]:
    events: List[Event] = []
    resumed = RESUMED.search(line)
    if resumed:
        events.append(Resumed(int(resumed.group(1)), timestamp(line)))
    if DONE_LINE.search(line):
        events.append(Done())
    if BEGIN_VALIDATION.search(line):
        events.append(ValidationBegins(timestamp(line)))
    fraction = PREDICTION_FRACTION.search(line)
    if fraction:
        events.append(PredictionFraction(float(fraction.group(1))))
    match = PROGRESS_LINE.search(line)
    if match:
        events.append(progress_event(match.group(1), match.group(2), timestamp(line), where))
    return events


def progress_event(tag: str, text: str, stamp: Optional[float], where: str) -> Event:
    """A train_inner, train or valid line's JSON as its event."""
    try:
        stats = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{where}: the {tag} line is not valid JSON ({error})") from error
    # train_inner keys are bare; train and valid lines prefix every key with their tag.
    prefix = "" if tag == "train_inner" else f"{tag}_"

    def stat(key: str) -> float:
        if prefix + key not in stats:
            raise ReportError(
                f"{where}: the {tag} line has no '{prefix + key}'; fairseq-train's JSON "
                f"progress lines always do (--log-format json)"
            )
        return float(stats[prefix + key])

    if tag == "valid":
        return ValidLine(int(stat("num_updates")), stat("ppl"))
    return ProgressLine(tag, int(stat("num_updates")), stat("wall"), stat("wpb"), stamp, where)


def validations(events: Sequence[Event]) -> List[Tuple[ValidLine, Optional[float]]]:
    """Each valid line with the time its validation began, if a "begin validation" line came
    after the previous valid line and had a time stamp."""
    paired, began = [], None
    for event in events:
        if isinstance(event, ValidationBegins):
            began = event.stamp
        elif isinstance(event, ValidLine):
            paired.append((event, began))
            began = None
    return paired


def check_one_run(progress: Sequence[ProgressLine]) -> None:
    """A restart from a checkpoint starts `wall` again from 0: times would no longer add up."""
    for before, now in zip(progress, progress[1:]):
        for name, old, new in (("num_updates", before.num_updates, now.num_updates),
                               ("wall", before.wall, now.wall)):
            if new < old:
                raise ReportError(
                    f"{now.where}: {name} goes back from {old:g} to {new:g}: the log holds more "
                    f"than one fairseq-train run (a restart from a checkpoint?); the report reads "
                    f"one uninterrupted run per directory"
                )


def training_tokens(progress: Sequence[ProgressLine]) -> float:
    """Tokens trained on: each finished epoch from its train line (its wpb times its updates),
    the unfinished rest from the train_inner lines after it (each one's wpb times the updates
    since the line before)."""
    finished = since_epoch_end = 0.0
    epoch_end_updates = last_updates = 0
    for line in progress:
        if line.tag == "train":
            finished += line.tokens_per_update * (line.num_updates - epoch_end_updates)
            epoch_end_updates, since_epoch_end = line.num_updates, 0.0
        else:
            since_epoch_end += line.tokens_per_update * (line.num_updates - last_updates)
        last_updates = line.num_updates
    return finished + since_epoch_end


def timestamp(line: str) -> Optional[float]:
    match = TIMESTAMP.match(line)
    return datetime.fromisoformat(match.group(1)).timestamp() if match else None


def validation_start(progress: Sequence[ProgressLine], num_updates: int,
                     began: Optional[float]) -> float:
    """fairseq's `wall` when the validation after update `num_updates` began: that of a
    train_inner line at that update (written just before), else that of the last train_inner
    line before it plus the seconds from its time stamp to the "begin validation" line's;
    without time stamps, wall_clock_at's estimate. Pace-based estimates would count the
    validations and checkpoints inside an interval as training time."""
    inner = [line for line in progress
             if line.tag == "train_inner" and line.num_updates <= num_updates]
    if not inner or inner[-1].num_updates == num_updates or began is None \
            or inner[-1].stamp is None or inner[-1].stamp > began:
        return wall_clock_at(progress, num_updates)
    return inner[-1].wall + began - inner[-1].stamp


def wall_clock_at(progress: Sequence[ProgressLine], num_updates: int) -> float:
    """fairseq's `wall` once update `num_updates` was done, before its validation. A train_inner
    line is written before the validation at its update, a train line after it and the
    checkpoint (the last line of a run stopped by --stop-time-hours is one), so train lines
    count only in a log without train_inner lines. The time is that of the line at that update,
    else linear between the lines around it, from (0 updates, 0 s) at the start; past the last
    line, at the pace of the last interval."""
    inner = [line for line in progress if line.tag == "train_inner"]
    times: Dict[int, float] = {0: 0.0}
    for line in inner or progress:
        times.setdefault(line.num_updates, line.wall)
    updates = sorted(times)
    if num_updates in times:
        return times[num_updates]
    after = min(bisect.bisect(updates, num_updates), len(updates) - 1)
    low, high = updates[after - 1], updates[after]
    pace = (times[high] - times[low]) / (high - low)
    return times[low] + pace * (num_updates - low)


def read_eval_lm_ppl(path: Path) -> Optional[float]:
    """The perplexity in a fairseq-eval-lm log, from its base-2 loss (the printed perplexity
    has two decimals): NaN or infinite for a diverged model; None when there is no such log."""
    if path.is_dir():
        raise ReportError(f"{path}: a directory; it must be fairseq-eval-lm's output, or absent "
                          f"for a run not scored")
    if not path.is_file():
        return None
    losses = [float(match.group(1)) for match in map(EVAL_LM_LOSS.search, path.read_text(
        errors="replace").splitlines()) if match]
    if not losses:
        raise ReportError(
            f"{path}: no 'Loss (base 2): ..., Perplexity: ...' line; fairseq-eval-lm writes one "
            f"when it has scored the whole subset (did it fail? its output is in the file)"
        )
    return perplexity(losses[-1])


def perplexity(base2_loss: float) -> float:
    """2 ** the loss; infinite past the largest float (a loss over 1024 bits)."""
    try:
        return 2.0 ** base2_loss
    except OverflowError:
        return math.inf
