"""Accuracy of a model on a task's examples: each example's answer is the candidate whose
continuation the model finds most likely, by the raw sum of its tokens' log-probabilities or by
their mean (per-token normalisation, GPT-3's rule for most tasks)."""

from dataclasses import asdict, dataclass
from typing import List, Tuple

import torch

from .example import Example
from .prompt_layout import Window, layout_for
from .scoring import Score, score_windows
from .text_encoding import TextEncoder

RULES = ["per-token", "raw"]


@dataclass(frozen=True)
class TaskResult:
    task: str
    examples: int
    correct_raw: int  # examples whose best candidate by summed log-likelihood is right
    correct_per_token: int  # the same by mean log-likelihood per continuation token
    truncated: int  # examples with a candidate whose context was cut from the left
    unscored: int  # examples with a candidate whose continuation was not all scored

    @property
    def accuracy(self) -> float:
        return self.correct_raw / self.examples

    @property
    def accuracy_norm(self) -> float:
        return self.correct_per_token / self.examples

    def headline(self, rule: str) -> float:
        return self.accuracy_norm if rule == "per-token" else self.accuracy

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm}


def best(scores: List[float]) -> int:
    """The first candidate of the highest score."""
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


def score_examples(examples: List[Example], encoder: TextEncoder, model, batch_size: int,
                   device: torch.device, progress: bool = False, description: str = ""
                   ) -> Tuple[List[List[Score]], List[List[Window]]]:
    """Per example, the Score of every candidate, and the windows they were read from."""
    layout = layout_for(model)
    pad = encoder.dictionary.pad()
    windows = []
    for example in examples:
        for number, candidate in enumerate(example.candidates, start=1):
            context, continuation = encoder.encode_candidate(candidate)
            if not continuation:
                raise ValueError(f"{example.location}: candidate {number} has nothing to score "
                                 f"(continuation {candidate.continuation!r})")
            windows.append(layout.place(context, continuation, pad))
    scores = score_windows(model, windows, pad, batch_size, device, progress, description)
    grouped_scores, grouped_windows, start = [], [], 0
    for example in examples:
        end = start + len(example.candidates)
        grouped_scores.append(scores[start:end])
        grouped_windows.append(windows[start:end])
        start = end
    return grouped_scores, grouped_windows


def evaluate(task: str, examples: List[Example], encoder: TextEncoder, model, batch_size: int,
             device: torch.device, progress: bool = False) -> TaskResult:
    if not examples:
        raise ValueError(f"no {task} examples to evaluate")
    scores, windows = score_examples(examples, encoder, model, batch_size, device, progress,
                                     description=task)
    correct_raw = correct_per_token = truncated = unscored = 0
    for example, candidate_scores, candidate_windows in zip(examples, scores, windows):
        correct_raw += best([s.log_likelihood for s in candidate_scores]) in example.gold
        correct_per_token += best([s.per_token for s in candidate_scores]) in example.gold
        truncated += any(window.truncated for window in candidate_windows)
        unscored += any(window.unscored > 0 for window in candidate_windows)
    return TaskResult(task, len(examples), correct_raw, correct_per_token, truncated, unscored)
