"""Where a candidate's tokens go in the model's input, and which predictions are scored.

Every model here is causal, so the prediction of token i reads tokens < i only, and a model's
input is at most its context T (``max_positions``) long. A candidate (context ids, continuation
ids) becomes a window: context + continuation, or its last T + 1 tokens if it is longer (the
context is cut from the left), fed as input tokens (all but the last) whose targets are the next
tokens; the scored predictions are those of the continuation's tokens.

The continuation's predictions are scored from position P on, where P is 0 for every arch but
smlp_partial. smlp_partial routes each feature column from its values on the first
P = T - floor(0.8 T) positions, so only its predictions at positions >= P are free of the future.
Its windows start with the text as the others' do, so the router reads the context; a context
too short to fill the first P positions is preceded by the padding id, just enough for the
continuation's first prediction to sit at P. A continuation that does not fit in the T - P scored
positions has only its last ones scored, and is counted. Windows are at most T long, and batches
pad them on the right, which no causal model reads.
"""

from dataclasses import dataclass
from typing import List

from ..modules.smoe import PartialPredictionSMoE


@dataclass(frozen=True)
class Window:
    tokens: List[int]  # the model's input
    targets: List[int]  # targets[i] is the token that follows tokens[i]
    scored: range  # positions whose predictions of targets count
    truncated: bool  # context tokens were cut from the left
    unscored: int  # continuation tokens that fell outside the scored positions


@dataclass(frozen=True)
class Layout:
    length: int  # the model's context T
    scored_from: int  # P: the first position whose prediction may be scored

    def place(self, context: List[int], continuation: List[int], pad: int) -> Window:
        if not context or not continuation:
            raise ValueError("a candidate needs at least one context token (the leading "
                             "end-of-sentence id) and one continuation token")
        sequence = context + continuation
        inputs = min(len(sequence) - 1, self.length)
        kept = sequence[len(sequence) - inputs - 1:]  # the last inputs + 1 tokens
        # Left padding moves the continuation's first prediction up to P, as far as T allows.
        first_prediction = len(kept) - len(continuation) - 1
        padding = min(max(0, self.scored_from - first_prediction), self.length - inputs)
        tokens = [pad] * padding + kept[:-1]
        targets = [pad] * padding + kept[1:]
        # The continuation's targets are the last ones; those before scored_from are not scored.
        scored = range(max(len(targets) - len(continuation), self.scored_from), len(targets))
        return Window(tokens, targets, scored, truncated=len(kept) < len(sequence),
                      unscored=len(continuation) - len(scored))


def layout_for(model) -> Layout:
    """Scored from the routers' P for a model with partial-prediction routing (smlp_partial),
    else from the start."""
    routers = [m for m in model.modules() if isinstance(m, PartialPredictionSMoE)]
    return Layout(model.max_positions(), routers[0].context_positions if routers else 0)
