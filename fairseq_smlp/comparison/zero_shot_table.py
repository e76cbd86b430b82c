"""The comparison report's zero-shot columns: each system's accuracy on the tasks it was scored on
(``RUNS_DIR/<system>/zero_shot/<task>.json``, written by ``python -m fairseq_smlp.zero_shot
--json-out``), next to the paper's figures for its 9-10B-parameter models."""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .train_log import ReportError, read_json_object

ZERO_SHOT_DIR = "zero_shot"
# The tasks whose validation sets ship offline, in the order of the paper's table: always
# columns. The others get a column when a system was scored on them (data of your own).
TASKS = ("copa", "piqa", "winogrande", "hellaswag")
OTHER_TASKS = ("storycloze", "record")
TASK_TITLES = {"copa": "COPA", "piqa": "PIQA", "winogrande": "Winogrande",
               "hellaswag": "HellaSwag", "storycloze": "StoryCloze", "record": "ReCoRD"}
# Zero-shot accuracy (%) of the paper's 2.0 TFLOPs models (Yu et al. 2022, arXiv 2203.06850,
# its zero-shot table); None where no figure is listed. No dense or gMLP row is listed.
PAPER = {
    "smlp_deterministic": ("sMLP-deterministic 9.4B", {"copa": 79.0, "piqa": 73.0,
                                                       "winogrande": 54.3, "hellaswag": 54.5,
                                                       "record": 73.4}),
    "switch": ("Switch 9B", {"copa": 75.0, "piqa": None, "winogrande": 53.4, "hellaswag": 52.5,
                             "record": 79.9}),
    "gshard": ("GShard 9B", {"copa": 76.0, "piqa": 68.1, "winogrande": 51.1, "hellaswag": 38.0,
                             "record": 72.4}),
    "base": ("BASE 10B", {"copa": 63.0, "piqa": 63.8, "winogrande": 51.0, "hellaswag": None,
                          "record": 60.7}),
    "hash": ("HASH 10B", {"copa": 64.0, "piqa": 63.8, "winogrande": 51.7, "hellaswag": 33.0,
                          "record": 67.2}),
}
MISSING = "—"


@dataclass(frozen=True)
class TaskScore:
    accuracy: float  # by the rule the command was run with (its "headline")
    rule: str
    examples: int
    truncated: int
    data: str  # where the examples came from
    seeds: int = 1  # the seeds the accuracy is the mean of


def read_zero_shot(run_dir: Path) -> Dict[str, TaskScore]:
    """The tasks a run was scored on, by name; empty when it was not."""
    scores = {}
    for path in sorted((run_dir / ZERO_SHOT_DIR).glob("*.json")):
        how = (f"write it with `python -m fairseq_smlp.zero_shot --task TASK --path CHECKPOINT "
               f"--json-out {path}`")
        record = read_json_object(path, how)
        try:
            rule = record["headline"]
            accuracy = record["accuracy_norm" if rule == "per-token" else "accuracy"]
            scores[record["task"]] = TaskScore(accuracy, rule, record["examples"],
                                               record["truncated"], record["data"])
        except KeyError as error:
            raise ReportError(f"{path}: no {error}; {how}") from error
    return scores


def percent(value: Optional[float]) -> str:
    return MISSING if value is None else f"{value:.1f}"


def zero_shot_markdown(scores: Dict[str, Dict[str, TaskScore]]) -> List[str]:
    """Markdown lines of the zero-shot table (systems in the given order, then the paper's rows),
    with its notes; no lines when no system was scored."""
    if not any(scores.values()):
        return []
    scored = {task for tasks in scores.values() for task in tasks}
    columns = [*TASKS, *(task for task in OTHER_TASKS if task in scored)]
    header = ["system", *(TASK_TITLES[task] for task in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    most_seeds = max(s.seeds for tasks in scores.values() for s in tasks.values())
    for system, tasks in scores.items():
        cells = [cell(tasks.get(task), most_seeds) for task in columns]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    for system, (title, figures) in PAPER.items():
        cells = [percent(figures.get(task)) for task in columns]
        lines.append(f"| *paper: {title}* | " + " | ".join(cells) + " |")
    rules = sorted({s.rule for tasks in scores.values() for s in tasks.values()})
    return [
        "",
        *lines,
        "",
        f"Zero-shot accuracy (%), priming without fine-tuning, by {' and '.join(rules)} "
        f"log-likelihood of each candidate (`python -m fairseq_smlp.zero_shot`); examples: "
        f"{describe_examples(scores, columns)}. Chance is 50 for COPA, PIQA, StoryCloze and "
        f"Winogrande and 25 for HellaSwag. The rows in italics are the paper's "
        f"9-10B-parameter models trained on a corpus tens of thousands of times larger: they show "
        f"the ordering the paper reports, not figures a small run could reach.",
    ]


def cell(score: Optional[TaskScore], most_seeds: int) -> str:
    """The accuracy, and how many seeds it covers where that is fewer than another cell's."""
    if score is None:
        return MISSING
    seeds = f" ({score.seeds} of {most_seeds} seeds)" if score.seeds < most_seeds else ""
    return percent(100 * score.accuracy) + seeds


def describe_examples(scores: Dict[str, Dict[str, TaskScore]], columns: List[str]) -> str:
    """Each task's example counts and sources, and the most examples whose context was cut."""
    described = []
    for task in columns:
        task_scores = [tasks[task] for tasks in scores.values() if task in tasks]
        if not task_scores:
            continue
        counts = "/".join(map(str, sorted({s.examples for s in task_scores})))
        sources = "; ".join(sorted({s.data for s in task_scores}))
        truncated = max(s.truncated for s in task_scores)
        cut = f", {truncated} with the context cut" if truncated else ""
        described.append(f"{TASK_TITLES[task]} {counts} ({sources}{cut})")
    return ", ".join(described)
