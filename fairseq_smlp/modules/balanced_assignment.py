"""Balanced assignment of items (tokens or feature columns) to experts, as in BASE layers
(Lewis et al. 2021): every expert receives the same number of items and the total affinity is
close to the best a balanced assignment can reach.

CPU tensors go to a compiled auction run to completion (``_auction.c``): on the CPU nothing
waits for a read-back, and a sequential auction does a few thousand bids where the method below
runs a few hundred tensor operators. Elsewhere (CUDA) the method below runs, as one Triton kernel
(``balanced_assignment_kernel.py``) where Triton is installed; without Triton its few hundred
small kernels are recorded as a CUDA graph once a shape recurs, and replayed.

The work per call is fixed and stays on the device: no step reads a value back to the host or
loops a data-dependent number of times, so a training step never waits on it. ``solve`` writes
the method as tensor operators: the kernel's twin, which tests hold to the same results.

An item goes to the expert of highest score minus price; the steps find prices and owners:

1. Sinkhorn prices: ``SINKHORN_ITERATIONS`` iterations of the entropy-regularised balanced
   transport give every expert a price. They move groups of similar experts together, which the
   per-expert steps below cannot.
2. Clearing steps, ``PRICE_STEPS`` of them: every expert's price is set, all at once, to the one
   at which exactly C items would choose it were the other prices fixed (a quantile).
3. Auction rounds (Bertsekas 1988), ``AUCTION_ROUNDS`` of them: every unplaced item bids for its
   best expert, raising the price by its margin over its second best; each expert keeps its C
   highest bids and its price becomes the lowest bid it kept.
4. Closing rounds, ``CLOSING_ROUNDS`` of them: every item still unplaced proposes to its best
   expert with room, which takes the proposals with the largest margins up to its free slots.
5. What is left takes the free slots in item order, so every expert ends with exactly C items
   (C = N / E) whatever happened before.

A tiny fixed perturbation of the scores breaks ties, which would otherwise send every one of a
group of identical items to the same expert. The gap to the exact optimum, measured against
scipy's ``linear_sum_assignment``, is in docs/design.md and held by tests. fairseq's BASE layers
solve the same problem with a C++ auction (``fairseq.libbase``) run to completion.
"""

import importlib.util
import math
import warnings
from collections import Counter
from typing import Dict, Optional, Tuple

import torch

from .cuda_path import takes_cuda_path

# Chosen by a sweep against the exact optimum (docs/design.md): fewer leave skewed problems, or
# groups of near-identical experts, over 1% from it.
SINKHORN_ITERATIONS = 20
SINKHORN_TEMPERATURE = 0.05  # relative to the spread of the scores
PRICE_STEPS = 5
AUCTION_ROUNDS = 6
AUCTION_EPS = 1e-2  # bid increment, relative to the spread
CLOSING_ROUNDS = 2
# Tie-breaking perturbation, relative to the spread: it can cost at most twice this per item.
TIE_BREAK = 1e-4

# Groups' sort keys are this far apart; priorities within a group must span less.
KEY_STRIDE = 1e9


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
    if num_experts == 1 or num_items == 0:
        return scores.new_zeros(*batch, num_items, dtype=torch.long)
    if scores.device.type == "cpu" and not takes_cuda_path(scores) and cpu_auction() is not None:
        expert = auction_on_cpu(scores)
    elif takes_cuda_path(scores) and fused_kernel_usable():
        expert = fused_assignment(scores)
    elif (scores.is_cuda and not torch.cuda.is_current_stream_capturing()
          and not torch.compiler.is_compiling()):  # a compiled region fuses the steps instead
        expert = replayed(scores)
    else:
        expert = solve(scores)
    return expert.reshape(*batch, num_items)


def cpu_auction():
    """The compiled CPU solver (``_auction.c``), or None where the package was not built."""
    global _CPU_AUCTION
    if _CPU_AUCTION is None:
        try:
            from . import _auction
            _CPU_AUCTION = _auction
        except ImportError:
            warnings.warn("fairseq_smlp.modules._auction is not built (pip install -e . builds "
                          "it): balanced assignment on the CPU runs the device method instead, "
                          "several times slower")
            _CPU_AUCTION = False
    return _CPU_AUCTION or None


_CPU_AUCTION = None


@torch.library.custom_op("fairseq_smlp::auction_on_cpu", mutates_args=(), device_types="cpu")
def auction_on_cpu(scores: torch.Tensor) -> torch.Tensor:
    """(R, N, E) float32 CPU scores -> (R, N) experts, by the compiled auction run to
    completion: on the CPU no device waits for the host, so its data-dependent loop costs only
    its own work. An operator of its own, which a compiled region calls as it is."""
    scores = scores.detach().contiguous()
    expert = torch.empty(scores.shape[:2], dtype=torch.long)
    cpu_auction().solve(scores.numpy(), expert.numpy(), *scores.shape)
    return expert


@auction_on_cpu.register_fake
def _(scores: torch.Tensor) -> torch.Tensor:
    return scores.new_empty(scores.shape[:2], dtype=torch.long)


def fused_kernel_usable() -> bool:
    """Whether CUDA runs the method as one kernel: Triton is installed and the kernel has not
    failed here before."""
    global _TRITON_INSTALLED
    if _TRITON_INSTALLED is None:
        _TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
    return _TRITON_INSTALLED and _FUSED_KERNEL_FAILED is None


_TRITON_INSTALLED: Optional[bool] = None
_FUSED_KERNEL_FAILED: Optional[str] = None


@torch.library.custom_op("fairseq_smlp::fused_assignment", mutates_args=())
def fused_assignment(scores: torch.Tensor) -> torch.Tensor:
    """(R, N, E) float32 scores -> (R, N) experts by the method of this module in one operator:
    on CUDA one launch of its Triton kernel; on CPU tensors (the CUDA path run on a CPU) its twin
    ``solve``. Opaque to a compiled region, which calls it as it is."""
    if not scores.is_cuda:
        return solve(scores)
    global _FUSED_KERNEL_FAILED
    try:
        from .balanced_assignment_kernel import assign
        return assign(scores)
    except Exception as error:  # a Triton that cannot build the kernel: the same steps op by op
        _FUSED_KERNEL_FAILED = f"{type(error).__name__}: {error}"
        warnings.warn(f"the balanced assignment kernel failed ({_FUSED_KERNEL_FAILED}); the "
                      f"assignment runs as separate operators, recorded as a CUDA graph")
        return replayed(scores)


@fused_assignment.register_fake
def _(scores: torch.Tensor) -> torch.Tensor:
    return scores.new_empty(scores.shape[:2], dtype=torch.long)


def solve(scores: torch.Tensor) -> torch.Tensor:
    """(R, N, E) float32 scores -> (R, N) experts: the steps of the module's docstring."""
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
    scores = scores + (TIE_BREAK * spread)[:, :, None] * tie_break(scores)

    price = sinkhorn_prices(scores, capacity, spread)  # (R, E)
    for _ in range(PRICE_STEPS):
        price = clearing_prices(scores, price, capacity)
    owner = torch.full(scores.shape[:2], -1, dtype=torch.long, device=scores.device)  # (R, N')
    bid = torch.zeros_like(scores[..., 0])  # (R, N') the price each placed item paid
    for _ in range(AUCTION_ROUNDS):
        owner, bid, price = auction_round(scores, owner, bid, price, capacity, AUCTION_EPS * spread)
    for _ in range(CLOSING_ROUNDS):
        owner = closing_round(scores - price[:, None, :], owner, capacity, spread)
    return fill_free_slots(owner, capacity)[:, :num_items]


def replace_non_finite(scores: torch.Tensor) -> torch.Tensor:
    """NaN and infinite affinities (an fp16 overflow, say) become the lowest finite one of their
    problem (0 if it has none), as in fairseq's BaseLayer; fairseq's loss scaler then deals with
    the overflow as usual."""
    finite = torch.isfinite(scores)
    lowest = torch.where(finite, scores, torch.inf).amin(dim=(1, 2), keepdim=True)  # (R, 1, 1)
    lowest = torch.where(torch.isfinite(lowest), lowest, 0.0)
    return torch.where(finite, scores, lowest)


def tie_break(scores: torch.Tensor) -> torch.Tensor:
    """(N, E) values in [0, 1) from an integer hash of (item, expert): the same on every device
    and call, made on the device (nothing copied from the host, nothing cached) and drawing from
    no random number generator, so training's random stream is left alone."""
    num_items, num_experts = scores.shape[1:]
    item = torch.arange(num_items, device=scores.device)[:, None]
    expert = torch.arange(num_experts, device=scores.device)[None, :]
    key = ((item * 73856093) ^ (expert * 19349663)) % 2**32  # (N, E), no int64 overflow below
    key = (key * 40503) % 2**32  # Knuth's multiplicative hash
    key = key ^ (key >> 15)
    return (key % 2**16).float() / 2**16


def sinkhorn_prices(scores: torch.Tensor, capacity: int, spread: torch.Tensor) -> torch.Tensor:
    """(R, E): the expert-side dual variables of the entropy-regularised transport in which every
    item sends mass 1 and every expert receives ``capacity``, as prices."""
    temperature = (SINKHORN_TEMPERATURE * spread)[:, :, None]  # (R, 1, 1)
    # Scores lie in [0, spread]: the kernel stays within exp(-1 / SINKHORN_TEMPERATURE) of 1.
    kernel = torch.exp((scores - scores.amax(dim=(1, 2), keepdim=True)) / temperature)  # (R, N, E)
    # Matrix-vector products written as products and sums: no matrix product in routing (the
    # FLOP accounting of docs/flops.md counts the model's alone).
    expert_scale = scores.new_ones(scores.size(0), scores.size(2))  # (R, E)
    for _ in range(SINKHORN_ITERATIONS):
        item_scale = 1.0 / (kernel * expert_scale[:, None, :]).sum(2, keepdim=True).clamp_min(1e-30)
        expert_scale = capacity / (kernel * item_scale).sum(1).clamp_min(1e-30)  # (R, E)
    price = -temperature.squeeze(-1) * torch.log(expert_scale)  # (R, E)
    return price - price.amin(dim=1, keepdim=True)


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
    num_experts = scores.size(2)
    best, index, second = top_two(scores - price[:, None, :])
    unplaced = owner < 0
    new_bid = price.gather(1, index.squeeze(2)) + (best - second).squeeze(2) + eps  # (R, N)
    candidate = torch.where(unplaced, index.squeeze(2), owner)  # (R, N)
    candidate_bid = torch.where(unplaced, new_bid, bid)
    # Each expert keeps its C highest bids.
    # In increments, bids lie within a few hundred of each other (prices start near clearing and
    # a round raises them by at most the spread plus one increment): far inside KEY_STRIDE.
    rank = rank_in_group(candidate, candidate_bid / eps, num_experts)
    kept = rank < capacity
    # A full expert's price becomes the lowest bid it kept, that of rank C - 1 (the others
    # write to a spare column E).
    lowest_kept = torch.where(rank == capacity - 1, candidate, num_experts)
    price = torch.cat([price, price[:, :1]], dim=1).scatter_(1, lowest_kept, candidate_bid)
    return torch.where(kept, candidate, -1), candidate_bid, price[:, :num_experts]


def closing_round(values: torch.Tensor, owner: torch.Tensor, capacity: int,
                  spread: torch.Tensor) -> torch.Tensor:
    """Every unplaced item proposes to its best expert with a free slot (values: (R, N, E), score
    minus price); each such expert accepts, up to its free slots, the proposals of largest margin
    over the item's next such expert. Returns the new owner."""
    num_experts = values.size(2)
    free = capacity - group_counts(owner, num_experts)  # (R, E)
    best, index, second = top_two(values.masked_fill((free == 0)[:, None, :], -torch.inf))
    # A margin in [0, 1] of the spread; 1 when a single expert has room.
    margin = ((best - second).squeeze(2) / spread).nan_to_num(nan=0.0, posinf=1.0).clamp(0, 1)
    candidate = torch.where(owner < 0, index.squeeze(2), num_experts)  # (R, N); E: no proposal
    rank = rank_in_group(candidate, margin, num_experts)
    room = torch.cat([free, torch.zeros_like(free[:, :1])], dim=1).gather(1, candidate)
    return torch.where(rank < room, candidate, owner)


def group_counts(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(..., N) -> (..., G): the items of each group along the last dim. Entries outside [0, G)
    (-1: none) count for none."""
    group = torch.where((group >= 0) & (group < num_groups), group, num_groups)
    count = group.new_zeros(*group.shape[:-1], num_groups + 1)
    return count.scatter_add_(-1, group, torch.ones_like(group))[..., :num_groups]


def rank_in_group(group: torch.Tensor, priority: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(R, N) rank of each item inside its group (0 = highest priority), groups in [0, G], the
    last a spare one; equal priorities in item order. One stable sort on (group, -priority)
    packed into a float64 key."""
    key = group.double() * KEY_STRIDE - priority.double()
    order = key.argsort(dim=1, stable=True)  # (R, N) items grouped, highest priority first
    count = group_counts(group, num_groups + 1)  # (R, G + 1)
    start = count.cumsum(1) - count  # (R, G + 1) where each group begins in the sorted order
    sorted_group = group.gather(1, order)
    sorted_rank = torch.arange(group.size(1), device=group.device) - start.gather(1, sorted_group)
    return torch.empty_like(sorted_rank).scatter_(1, order, sorted_rank)


def fill_free_slots(owner: torch.Tensor, capacity: int) -> torch.Tensor:
    """The unplaced items, in item order, take the free slots in expert order. Slots and items
    are equal in number, so every expert ends full."""
    num_experts = owner.size(1) // capacity
    slot_end = (capacity - group_counts(owner, num_experts)).cumsum(1)  # (R, E)
    unplaced = owner < 0  # (R, N)
    arrival = unplaced.long().cumsum(1) - 1  # (R, N) rank among the unplaced
    expert = torch.searchsorted(slot_end, arrival, right=True).clamp_max(num_experts - 1)
    return torch.where(unplaced, expert, owner)


class CapturedSolve:
    """``solve`` for one input shape recorded once as a CUDA graph and replayed: its few hundred
    small kernels then cost the host one launch instead of one dispatch each."""

    def __init__(self, example: torch.Tensor):
        self.input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            solve(self.input)  # loads the kernels before recording
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a pin-memory thread) neither break the
        # recording nor are refused while it runs.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = solve(self.input)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        self.input.copy_(scores)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the output


# Shapes run op by op until seen RECORD_AFTER times, then recorded; at most MAX_RECORDED shapes
# are, so batches of ever-changing sizes never make recording (which waits for the device)
# happen every step.
RECORD_AFTER = 2
MAX_RECORDED = 16
_RECORDED: Dict[Tuple, Optional[CapturedSolve]] = {}
_SEEN: Counter = Counter()


def replayed(scores: torch.Tensor) -> torch.Tensor:
    """``solve(scores)``, through a recorded graph for recurring shapes."""
    key = (tuple(scores.shape), scores.device)
    if key not in _RECORDED:
        if len(_RECORDED) >= MAX_RECORDED:
            return solve(scores)
        _SEEN[key] += 1
        if _SEEN[key] < RECORD_AFTER:
            return solve(scores)
        _RECORDED[key] = record(scores)
    captured = _RECORDED[key]
    return captured(scores) if captured is not None else solve(scores)


def record(scores: torch.Tensor) -> Optional[CapturedSolve]:
    try:
        return CapturedSolve(scores)
    except RuntimeError as error:
        warnings.warn(f"balanced assignment of shape {tuple(scores.shape)} runs op by op: "
                      f"recording it as a CUDA graph failed ({error})")
        return None
