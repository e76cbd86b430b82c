"""Which positions partial prediction scores: the one rule shared by the task, the criterion and
smlp_partial's router.

A sequence of T = --tokens-per-sample positions is split into a context X1 (the first
T - floor(f T) positions) and a scored part X2 (the trailing floor(f T) positions), f being
--prediction-fraction (0.8 in the paper). The rule is fixed by T, not by each batch's length, so
that the last, shorter block of a split is never scored on positions the router reads.
"""

import math

import torch

DEFAULT_PREDICTION_FRACTION = 0.8


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"--prediction-fraction must lie strictly between 0 and 1 (the scored share of each "
            f"sequence; the paper uses 0.8); got {fraction}"
        )


def context_length(tokens_per_sample: int, fraction: float) -> int:
    """Number of leading context positions that are never scored."""
    check_fraction(fraction)
    scored = math.floor(round(fraction * tokens_per_sample, 6))
    if scored < 1 or scored == tokens_per_sample:
        raise ValueError(
            f"--prediction-fraction {fraction} of --tokens-per-sample {tokens_per_sample} leaves "
            f"{scored} scored and {tokens_per_sample - scored} context positions; both must be "
            f"at least 1"
        )
    return tokens_per_sample - scored


def fraction_for_context(tokens_per_sample: int, context: int) -> float:
    """The --prediction-fraction of fewest decimals that leaves ``context`` context positions of
    ``tokens_per_sample``."""
    middle = (tokens_per_sample - context + 0.5) / tokens_per_sample
    for digits in range(1, 7):
        if context_length(tokens_per_sample, round(middle, digits)) == context:
            return round(middle, digits)
    return middle


def mask_context(target: torch.Tensor, context: int, pad: int) -> torch.Tensor:
    """A copy of the (B, L) ``target`` with the context positions set to ``pad``."""
    target = target.clone()
    target[:, :context].fill_(pad)  # a fill: no tensor made from the Python value
    return target
