"""Where a candidate's tokens go in the model's input, and which predictions are scored.

Every model here is causal, so the prediction of token i reads tokens < i only, and a model's
input is at most its context T (``max_positions``) long. A candidate (context ids, continuation
ids) becomes a window: the last T + 1 tokens of context + continuation (the context is cut from
the left if they do not fit), fed as T input tokens whose targets are the next tokens; the scored
predictions are those of the continuation's tokens.

Two layouts:

- free (every arch but smlp_partial): the window is as long as the text (at most T), and batches
  pad it on the right; causality keeps the padding out of every real prediction.
- fixed (smlp_partial): the model routes on its first P = T - floor(0.8 T) positions and only
  predictions at positions >= P are free of the future, so the window is exactly T long,
  right-aligned and filled on the left with the padding id. The continuation's predictions are
  then the last ones, at positions >= P as long as it is at most T - P tokens long; a longer one
  has only its last T - P tokens scored, and is counted.
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
    scored_from: int  # the first position whose prediction may be scored
    fixed: bool  # every window is exactly ``length`` long, padded on the left

    def place(self, context: List[int], continuation: List[int], pad: int) -> Window:
        if not context or not continuation:
            raise ValueError("a candidate needs at least one context token (the leading "
                             "end-of-sentence id) and one continuation token")
        sequence = context + continuation
        inputs = min(len(sequence) - 1, self.length)
        kept = sequence[len(sequence) - inputs - 1:]  # the last inputs + 1 tokens
        padding = self.length - inputs if self.fixed else 0
        tokens = [pad] * padding + kept[:-1]
        targets = [pad] * padding + kept[1:]
        # The continuation's targets are the last ones; those before scored_from are not scored.
        scored = range(max(len(targets) - len(continuation), self.scored_from), len(targets))
        return Window(tokens, targets, scored, truncated=len(kept) < len(sequence),
                      unscored=len(continuation) - len(scored))


def layout_for(model) -> Layout:
    """The fixed layout for a model with partial-prediction routing (smlp_partial), else the
    free one."""
    length = model.max_positions()
    routers = [m for m in model.modules() if isinstance(m, PartialPredictionSMoE)]
    if routers:
        return Layout(length, routers[0].context_positions, fixed=True)
    return Layout(length, 0, fixed=False)
