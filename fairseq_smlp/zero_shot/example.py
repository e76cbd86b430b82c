"""What every task becomes: candidate continuations of a context, some of them right."""

from dataclasses import dataclass
from typing import FrozenSet, Tuple


@dataclass(frozen=True)
class Candidate:
    """One way to continue. ``context + continuation`` is the whole text; the model is scored on
    the continuation given the context (its leading space, if any, belongs to the continuation)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Example:
    candidates: Tuple[Candidate, ...]
    gold: FrozenSet[int]  # indices of the candidates that count as right
    location: str  # where it was read, e.g. 'copa.jsonl:3', for messages
