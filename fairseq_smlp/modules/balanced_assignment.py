"""Balanced assignment of items (tokens or feature columns) to experts, as in BASE layers
(Lewis et al. 2021): every expert receives the same number of items and the total affinity is
close to the best a balanced assignment can reach.

The work per call is fixed and stays on the device: no step reads a value back to the host or
loops a data-dependent number of times, so a training step never waits on it. On CUDA the few
hundred small kernels of one call are recorded once per input shape as a CUDA graph and replayed.

1. Clearing prices. An item goes to the expert of highest score minus price. Each of
   ``PRICE_STEPS`` steps sets every expert's price, all at once, to the one at which exactly C
   items would choose it were the other prices fixed (a quantile over the items).
2. Auction rounds (Bertsekas 1988), ``AUCTION_ROUNDS`` of them, from those prices: every
   unplaced item bids for its best expert, raising the price by its margin over its second
   best; each expert keeps its C highest bids and its price becomes the lowest bid it kept.
3. The items still unplaced take the free slots in item order, so every expert ends with
   exactly C items (C = N / E) whatever happened before.

A tiny fixed perturbation of the scores breaks ties, which would otherwise send every one of a
group of identical items to the same expert. The gap to the exact optimum, measured against
scipy's ``linear_sum_assignment``, is in docs/design.md and held by tests. fairseq's BASE layers
solve the same problem with a C++ auction (``fairseq.libbase``) run to completion.
"""

import functools
import math
import warnings
from collections import OrderedDict
from typing import Optional

import torch

# Chosen by a sweep against the exact optimum (docs/design.md): fewer left skewed problems up to
# 1% from it.
PRICE_STEPS = 5
AUCTION_ROUNDS = 6
# Bid increment of the auction, relative to the spread of the scores.
AUCTION_EPS = 1e-2
# Bids are within a few hundred increments of each other (prices start near clearing and each
# round raises them by at most the spread plus one increment); experts' keys are this far apart
# in increments.
BID_KEY_STRIDE = 1e9
# Tie-breaking perturbation, relative to the spread: it can cost at most twice this per item.
TIE_BREAK = 1e-4


@torch.no_grad()
def balanced_assignment(scores: torch.Tensor) -> torch.Tensor:
    """Assign every item to one expert, each expert taking at most ceil(N / E) items.

    Args:
        scores: (..., N, E) affinity of each item for each expert.
    Returns:
        (..., N) long tensor: the expert of each item. When E divides N every expert gets
        exactly N / E items.
    """
    *batch, num_items, num_experts = scores.shape
    scores = scores.reshape(-1, num_items, num_experts).float()  # (R, N, E)
    if num_experts == 1:
        return scores.new_zeros(*batch, num_items, dtype=torch.long)
    if scores.is_cuda and not torch.cuda.is_current_stream_capturing():
        expert = replayed(scores)
    else:
        expert = solve(scores)
    return expert.reshape(*batch, num_items)


def solve(scores: torch.Tensor) -> torch.Tensor:
    """(R, N, E) float32 scores -> (R, N) experts: the three steps of the module's docstring."""
    num_items, num_experts = scores.shape[1:]
    capacity = math.ceil(num_items / num_experts)
    scores = replace_non_finite(scores)
    # Shift each problem to start at 0 (the assignment does not change) and measure its spread.
    scores = scores - scores.amin(dim=(1, 2), keepdim=True)
    spread = scores.amax(dim=(1, 2)).clamp_min(1e-6)[:, None]  # (R, 1)
    # Placeholder items, indifferent to the expert, fill the slots left over when E does not
    # divide N, so that slots and items are equal in number.
    placeholders = num_experts * capacity - num_items
    if placeholders:
        scores = torch.cat([scores, scores.new_zeros(scores.size(0), placeholders, num_experts)], 1)
    scores = scores + (TIE_BREAK * spread)[:, :, None] * tie_break(*scores.shape[1:], scores.device)

    price = scores.new_zeros(scores.size(0), num_experts)  # (R, E)
    for _ in range(PRICE_STEPS):
        price = clearing_prices(scores, price, capacity)
    owner = torch.full(scores.shape[:2], -1, dtype=torch.long, device=scores.device)  # (R, N')
    bid = torch.zeros_like(scores[..., 0])  # (R, N') the price each placed item paid
    for _ in range(AUCTION_ROUNDS):
        owner, bid, price = auction_round(scores, owner, bid, price, capacity, AUCTION_EPS * spread)
    return fill_free_slots(owner, capacity)[:, :num_items]


class CapturedSolve:
    """``solve`` for one input shape recorded once as a CUDA graph and replayed: its few hundred
    small kernels then cost the host one launch instead of one dispatch each."""

    def __init__(self, example: torch.Tensor):
        self.input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            solve(self.input)  # loads the kernels and fills the tie-break cache
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = solve(self.input)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        self.input.copy_(scores)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the output


_CAPTURED: "OrderedDict[tuple, Optional[CapturedSolve]]" = OrderedDict()
# Shapes kept recorded; fairseq batches come in a few shapes (full batches, the last one).
MAX_CAPTURED = 16


def replayed(scores: torch.Tensor) -> torch.Tensor:
    """``solve(scores)`` through a recorded graph, recorded on first use of the shape; where
    recording fails (an older driver, say), ``solve`` itself, with a warning once."""
    key = (tuple(scores.shape), scores.device)
    if key not in _CAPTURED:
        try:
            _CAPTURED[key] = CapturedSolve(scores)
        except RuntimeError as error:
            warnings.warn(f"balanced assignment runs unrecorded: recording a CUDA graph failed "
                          f"({error})")
            _CAPTURED[key] = None
        if len(_CAPTURED) > MAX_CAPTURED:
            _CAPTURED.popitem(last=False)
    _CAPTURED.move_to_end(key)
    captured = _CAPTURED[key]
    return captured(scores) if captured is not None else solve(scores)


def replace_non_finite(scores: torch.Tensor) -> torch.Tensor:
    """NaN and infinite affinities (an fp16 overflow, say) become the lowest finite one of their
    problem (0 if it has none), as in fairseq's BaseLayer; fairseq's loss scaler then deals with
    the overflow as usual."""
    finite = torch.isfinite(scores)
    lowest = torch.where(finite, scores, torch.inf).amin(dim=(1, 2), keepdim=True)  # (R, 1, 1)
    lowest = torch.where(torch.isfinite(lowest), lowest, 0.0)
    return torch.where(finite, scores, lowest)


@functools.lru_cache(maxsize=64)
def tie_break(num_items: int, num_experts: int, device: torch.device) -> torch.Tensor:
    """(N, E) fixed pseudo-random values in [0, 1), the same for every call of this shape (no
    random number generator is drawn from, so training's random stream is left alone)."""
    item = torch.arange(num_items, dtype=torch.float64)[:, None]
    expert = torch.arange(num_experts, dtype=torch.float64)[None, :]
    return torch.frac(torch.sin(item * 12.9898 + expert * 78.233) * 43758.5453).float().to(device)


def top_two(values: torch.Tensor):
    """Along the last dim of (R, N, E): the best value, its index and the second best value,
    each (R, N, 1)."""
    best, index = values.max(dim=2, keepdim=True)
    second = values.scatter(2, index, -torch.inf).amax(dim=2, keepdim=True)
    return best, index, second


def clearing_prices(scores: torch.Tensor, price: torch.Tensor, capacity: int) -> torch.Tensor:
    """(R, E): for each expert, the price at which exactly ``capacity`` items would choose it,
    the other experts' prices being ``price``."""
    best, index, second = top_two(scores - price[:, None, :])
    experts = torch.arange(scores.size(2), device=scores.device)
    others = torch.where(index == experts, second, best)  # (R, N, E) best value elsewhere
    # Item n chooses e while e's price is below scores[n, e] - others[n, e]: the price that
    # clears e lies between the C-th and (C + 1)-th largest of these thresholds.
    top = (scores - others).topk(capacity + 1, dim=1).values  # (R, C + 1, E)
    return 0.5 * (top[:, capacity - 1] + top[:, capacity])


def auction_round(scores, owner, bid, price, capacity: int, eps):
    """One round of the auction. scores: (R, N, E); owner, bid: (R, N), owner -1 if unplaced;
    price: (R, E); eps: (R, 1). Returns the new owner, bid and price."""
    num_items, num_experts = scores.shape[1:]
    best, index, second = top_two(scores - price[:, None, :])
    unplaced = owner < 0
    new_bid = price.gather(1, index.squeeze(2)) + (best - second).squeeze(2) + eps  # (R, N)
    candidate = torch.where(unplaced, index.squeeze(2), owner)  # (R, N)
    candidate_bid = torch.where(unplaced, new_bid, bid)
    # Each expert keeps its C highest bids: one sort on (expert, -bid) packed into a float64
    # key (experts apart by far more than any bid), then each item's rank inside its group.
    key = candidate.double() * BID_KEY_STRIDE - candidate_bid.double() / eps.double()
    order = key.argsort(dim=1)  # (R, N)
    sorted_expert = candidate.gather(1, order)
    sorted_bid = candidate_bid.gather(1, order)
    count = torch.zeros_like(price, dtype=torch.long).scatter_add_(
        1, candidate, torch.ones_like(candidate))  # (R, E)
    group_start = count.cumsum(1) - count
    rank = torch.arange(num_items, device=scores.device) - group_start.gather(1, sorted_expert)
    kept = rank < capacity
    owner = torch.empty_like(owner).scatter_(
        1, order, torch.where(kept, sorted_expert, torch.full_like(sorted_expert, -1)))
    bid = torch.empty_like(bid).scatter_(1, order, sorted_bid)
    # A full expert's price becomes the lowest bid it kept: the bid ranked C - 1 in its group,
    # or the old price where the expert is not full (scattered to a spare column E).
    lowest_kept = torch.where(rank == capacity - 1, sorted_expert, num_experts)
    price = torch.cat([price, price[:, :1]], dim=1).scatter_(1, lowest_kept, sorted_bid)
    return owner, bid, price[:, :num_experts]


def fill_free_slots(owner: torch.Tensor, capacity: int) -> torch.Tensor:
    """The unplaced items, in item order, take the free slots in expert order. Slots and items
    are equal in number, so every expert ends full."""
    num_experts = owner.size(1) // capacity
    placed = owner.new_zeros(owner.size(0), num_experts + 1).scatter_add_(
        1, torch.where(owner < 0, num_experts, owner), torch.ones_like(owner))[:, :num_experts]
    slot_end = (capacity - placed).cumsum(1)  # (R, E)
    unplaced = owner < 0  # (R, N)
    arrival = unplaced.long().cumsum(1) - 1  # (R, N) rank among the unplaced
    expert = torch.searchsorted(slot_end, arrival, right=True).clamp_max(num_experts - 1)
    return torch.where(unplaced, expert, owner)
