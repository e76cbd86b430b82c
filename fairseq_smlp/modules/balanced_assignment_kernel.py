"""The device method of balanced_assignment.py as one Triton kernel: the same steps (Sinkhorn
prices, clearing prices, auction rounds, closing rounds, free slots), the same constants, in one
launch instead of a few hundred small ones. One program solves one problem, streaming its items
through in blocks of ``BLOCK`` rows: every step is one or more passes over the items, each pass
reducing what the next needs into per-expert vectors held in registers.

Where ``solve`` sorts (the C-th largest threshold of an expert, the C highest bids it keeps, the
proposals of largest margin), the kernel selects by radix: a float's bits, reordered so that
integer order is float order, are fixed four at a time, each four by one pass that counts, for
every expert, its members under each of the 16 values the next four bits can take. Eight passes
find the k-th largest of every expert exactly; of the items equal to it, the first ones in item
order are taken, as ``solve``'s stable sort takes them. Only the order of the Sinkhorn sums
differs from ``solve``, so the two agree on all but the items whose prices tie within a rounding.

Per problem and call: 2 passes for the score range, 20 Sinkhorn, 5 x 9 clearing, 1 to clear the
owners, 6 x 10 auction, 2 x 10 closing, 1 to fill: 149 passes over the N x E scores.
"""

import torch
import triton
import triton.language as tl

from .balanced_assignment import (AUCTION_EPS, AUCTION_ROUNDS, CLOSING_ROUNDS, PRICE_STEPS,
                                  SINKHORN_ITERATIONS, SINKHORN_TEMPERATURE, TIE_BREAK)

# Items a program holds at once: the radix count makes a (BLOCK, E, 16) tensor of them.
BLOCK_ON_DEVICE = 32
# The interpreter pays per operation, not per element: larger blocks, fewer operations.
BLOCK_INTERPRETED = 1024

# Globals a kernel reads must be constexpr. What the scratch candidate slots hold for an item
# that makes no proposal; what a radix selection ranks: thresholds from the scores, or scratch.
NO_EXPERT = tl.constexpr(-1)
_SCORES = tl.constexpr(0)
_SCRATCH = tl.constexpr(1)


@triton.jit
def _order_key(x):
    """fp32 -> int64 in [0, 2**32), in the same order as the floats."""
    bits = x.to(tl.int32, bitcast=True).to(tl.int64)
    magnitude = bits & 0x7FFFFFFF
    return tl.where(bits >= 0, magnitude + 2147483648, 2147483647 - magnitude)


@triton.jit
def _key_value(key):
    """The float whose order key is ``key``."""
    positive = key >= 2147483648
    magnitude = tl.where(positive, key - 2147483648, 2147483647 - key).to(tl.int32)
    value = magnitude.to(tl.float32, bitcast=True)
    return tl.where(positive, value, -value)


@triton.jit
def _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale):
    """(BLOCK, E_PAD) scores as ``solve`` prepares them: shifted to start at 0, non-finite ones
    at 0, placeholder items (rows past N) at 0, plus the tie-breaking hash of (item, expert);
    columns past E at -inf."""
    inside = (rows[:, None] < num_items) & (cols[None, :] < num_experts)
    raw = tl.load(scores_ptr + rows[:, None] * num_experts + cols[None, :], mask=inside,
                  other=0.0)
    finite = inside & (tl.abs(raw) < float("inf"))
    shifted = tl.where(finite, raw - low, 0.0)
    item = rows[:, None].to(tl.int64)
    expert = cols[None, :].to(tl.int64)
    key = ((item * 73856093) ^ (expert * 19349663)) % 4294967296
    key = (key * 40503) % 4294967296
    key = key ^ (key >> 15)
    tie = (key % 65536).to(tl.float32) / 65536.0
    return tl.where(cols[None, :] < num_experts, shifted + tie_scale * tie, float("-inf"))


@triton.jit
def _top_two(values, cols, E_PAD: tl.constexpr):
    """Per row of (BLOCK, E_PAD): the best value, its first column, the second best value."""
    best = tl.max(values, 1)
    index = tl.min(tl.where(values == best[:, None], cols[None, :], E_PAD), 1)
    second = tl.max(tl.where(cols[None, :] == index[:, None], float("-inf"), values), 1)
    return best, index, second


@triton.jit
def _pick(vector, index, cols):
    """vector[index] for (E_PAD,) ``vector`` and (BLOCK,) ``index``."""
    return tl.sum(tl.where(cols[None, :] == index[:, None], vector[None, :], 0.0), 1)


@triton.jit
def _members(SOURCE: tl.constexpr, scores_ptr, cand_ptr, value_ptr, rows, cols, num_items,
             num_rows, num_experts, low, tie_scale, price, E_PAD: tl.constexpr):
    """(BLOCK, E_PAD) order keys and membership of what a selection ranks, for one block:
    _SCORES, every item's clearing threshold for every expert (its score minus its best value at
    the other experts); _SCRATCH, each item's value from scratch, a member of its candidate."""
    in_rows = rows < num_rows
    if SOURCE == 0:
        values = _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale)
        best, index, second = _top_two(values - price[None, :], cols, E_PAD)
        others = tl.where(cols[None, :] == index[:, None], second[:, None], best[:, None])
        keys = _order_key(values - others)
        member = in_rows[:, None] & (cols[None, :] < num_experts)
    else:
        cand = tl.load(cand_ptr + rows, mask=in_rows, other=NO_EXPERT)
        value = tl.load(value_ptr + rows, mask=in_rows, other=0.0)
        keys = _order_key(value)[:, None] + tl.zeros((1, E_PAD), tl.int64)
        member = cand[:, None] == cols[None, :]
    return keys, member


@triton.jit
def _select(SOURCE: tl.constexpr, scores_ptr, cand_ptr, value_ptr, num_items, num_rows,
            num_experts, low, tie_scale, price, k, BLOCK: tl.constexpr, E_PAD: tl.constexpr):
    """Per expert, the order key of the k-th largest of its members (k: (E_PAD,) int64 >= 1),
    whether it has k members, and how many members equal to it the k largest include."""
    cols = tl.arange(0, E_PAD)
    digits = tl.arange(0, 16)
    prefix = tl.zeros((E_PAD,), tl.int64)
    remaining = k
    exists = cols >= 0
    for level in tl.static_range(8):
        shift = 28 - 4 * level
        counts = tl.zeros((E_PAD, 16), tl.int32)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            keys, member = _members(SOURCE, scores_ptr, cand_ptr, value_ptr, rows, cols,
                                    num_items, num_rows, num_experts, low, tie_scale, price,
                                    E_PAD)
            if level > 0:
                member = member & ((keys >> (shift + 4)) == (prefix[None, :] >> (shift + 4)))
            digit = (keys >> shift) & 15
            hit = member[:, :, None] & (digit[:, :, None] == digits[None, None, :])
            counts += tl.sum(hit.to(tl.int32), 0)
        # above[e, d]: members of the prefix whose next digit exceeds d
        higher = (digits[None, :] > digits[:, None]).to(tl.int32)  # (16, 16) [d, d']
        above = tl.sum(counts[:, None, :] * higher[None, :, :], 2)
        reach = (above + counts) >= remaining[:, None]
        chosen = tl.max(tl.where(reach, digits[None, :], -1), 1)
        found = chosen >= 0
        exists = exists & found
        above_chosen = tl.sum(tl.where(digits[None, :] == chosen[:, None], above, 0), 1)
        remaining = tl.where(found, remaining - above_chosen, remaining)
        prefix = tl.where(found, prefix | (chosen.to(tl.int64) << shift), prefix)
    return prefix, exists, remaining


@triton.jit
def _largest(cand_ptr, value_ptr, rows, cols, num_rows, kth, need, taken):
    """A block of scratch items after a selection: their candidates and values, (BLOCK, E_PAD)
    membership, and whether each is among its candidate's k largest (above the k-th, or equal
    to it and among the first ``need`` equal ones in item order, ``taken`` of them in earlier
    blocks); and (E_PAD,) the block's members equal to the k-th."""
    in_rows = rows < num_rows
    cand = tl.load(cand_ptr + rows, mask=in_rows, other=NO_EXPERT)
    value = tl.load(value_ptr + rows, mask=in_rows, other=0.0)
    keys = _order_key(value)[:, None]
    member = cand[:, None] == cols[None, :]
    equal = (member & (keys == kth[None, :])).to(tl.int64)
    rank = tl.cumsum(equal, 0) - equal + taken[None, :]
    largest = (keys > kth[None, :]) | ((equal > 0) & (rank < need[None, :]))
    return cand, value, member, member & largest, tl.sum(equal, 0)


@triton.jit
def _assignment_kernel(
    scores_ptr, expert_ptr, owner_ptr, bid_ptr, cand_ptr, value_ptr,
    num_items, num_rows, num_experts, capacity,
    SINKHORN: tl.constexpr, TEMPERATURE: tl.constexpr, PRICE: tl.constexpr,
    AUCTION: tl.constexpr, EPS: tl.constexpr, CLOSING: tl.constexpr, TIE: tl.constexpr,
    BLOCK: tl.constexpr, E_PAD: tl.constexpr,
):
    problem = tl.program_id(0).to(tl.int64)
    scores_ptr += problem * num_items * num_experts
    expert_ptr += problem * num_items
    owner_ptr += problem * num_rows
    bid_ptr += problem * num_rows
    cand_ptr += problem * num_rows
    value_ptr += problem * num_rows
    cols = tl.arange(0, E_PAD)
    valid = cols < num_experts

    # The score range: the lowest and highest finite scores.
    lowest = tl.full((BLOCK, E_PAD), float("inf"), tl.float32)
    highest = tl.full((BLOCK, E_PAD), float("-inf"), tl.float32)
    for start in range(0, num_items, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        inside = (rows[:, None] < num_items) & valid[None, :]
        raw = tl.load(scores_ptr + rows[:, None] * num_experts + cols[None, :], mask=inside,
                      other=0.0)
        finite = inside & (tl.abs(raw) < float("inf"))
        lowest = tl.minimum(lowest, tl.where(finite, raw, float("inf")))
        highest = tl.maximum(highest, tl.where(finite, raw, float("-inf")))
    low = tl.min(tl.min(lowest, 1), 0)
    high = tl.max(tl.max(highest, 1), 0)
    low = tl.where(low < float("inf"), low, 0.0)
    spread = tl.maximum(high - low, 1e-6)
    tie_scale = TIE * spread

    # 1. Sinkhorn prices.
    peak = tl.full((BLOCK, E_PAD), float("-inf"), tl.float32)
    for start in range(0, num_rows, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        values = _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale)
        peak = tl.maximum(peak, tl.where(rows[:, None] < num_rows, values, float("-inf")))
    top = tl.max(tl.max(peak, 1), 0)
    temperature = TEMPERATURE * spread
    expert_scale = tl.where(valid, 1.0, 0.0)
    # Loop counters are named: Triton takes every `_` of the kernel for one variable, whose
    # type must not change across a loop.
    for step in range(SINKHORN):
        column = tl.zeros((E_PAD,), tl.float32)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            values = _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale)
            kernel = tl.exp((values - top) / temperature)
            kernel = tl.where(rows[:, None] < num_rows, kernel, 0.0)
            item_scale = 1.0 / tl.maximum(tl.sum(kernel * expert_scale[None, :], 1), 1e-30)
            column += tl.sum(kernel * item_scale[:, None], 0)
        expert_scale = capacity / tl.maximum(column, 1e-30)
    price = -temperature * tl.log(expert_scale)
    price = tl.where(valid, price - tl.min(tl.where(valid, price, float("inf")), 0), 0.0)

    # 2. Clearing prices: midway between the C-th and (C + 1)-th largest thresholds.
    k = tl.where(valid, capacity, 1).to(tl.int64)
    for step in range(PRICE):
        kth, exists, remaining = _select(_SCORES, scores_ptr, cand_ptr, value_ptr, num_items,
                                         num_rows, num_experts, low, tie_scale, price, k,
                                         BLOCK, E_PAD)
        at_least = tl.zeros((E_PAD,), tl.int32)
        below = tl.full((E_PAD,), -1, tl.int64)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            keys, member = _members(_SCORES, scores_ptr, cand_ptr, value_ptr, rows, cols,
                                    num_items, num_rows, num_experts, low, tie_scale, price,
                                    E_PAD)
            at_least += tl.sum((member & (keys >= kth[None, :])).to(tl.int32), 0)
            below = tl.maximum(below, tl.max(tl.where(member & (keys < kth[None, :]), keys, -1),
                                             0))
        next_key = tl.where(at_least >= capacity + 1, kth, below)
        price = tl.where(valid, 0.5 * (_key_value(kth) + _key_value(next_key)), 0.0)

    # 3. Auction rounds.
    eps = EPS * spread
    for start in range(0, num_rows, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        tl.store(owner_ptr + rows, tl.full((BLOCK,), NO_EXPERT, tl.int32), mask=rows < num_rows)
        tl.store(bid_ptr + rows, tl.zeros((BLOCK,), tl.float32), mask=rows < num_rows)
    load = tl.zeros((E_PAD,), tl.int32)
    for step in range(AUCTION):
        bidders = tl.zeros((E_PAD,), tl.int32)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            in_rows = rows < num_rows
            values = _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale)
            best, index, second = _top_two(values - price[None, :], cols, E_PAD)
            owner = tl.load(owner_ptr + rows, mask=in_rows, other=NO_EXPERT)
            bid = tl.load(bid_ptr + rows, mask=in_rows, other=0.0)
            unplaced = owner < 0
            new_bid = _pick(price, index, cols) + (best - second) + eps
            cand = tl.where(unplaced, index, owner)
            tl.store(cand_ptr + rows, cand, mask=in_rows)
            tl.store(value_ptr + rows, tl.where(unplaced, new_bid, bid), mask=in_rows)
            bidders += tl.sum((in_rows[:, None] & (cand[:, None] == cols[None, :])).to(tl.int32),
                              0)
        k = tl.where(valid, capacity, 1).to(tl.int64)
        kth, full, need = _select(_SCRATCH, scores_ptr, cand_ptr, value_ptr, num_items, num_rows,
                                  num_experts, low, tie_scale, price, k, BLOCK, E_PAD)
        full = full & valid
        taken = tl.zeros((E_PAD,), tl.int64)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            cand, bid, member, largest, equal = _largest(cand_ptr, value_ptr, rows, cols,
                                                         num_rows, kth, need, taken)
            kept = tl.sum((member & (~full[None, :] | largest)).to(tl.int32), 1) > 0
            tl.store(owner_ptr + rows, tl.where(kept, cand, NO_EXPERT), mask=rows < num_rows)
            tl.store(bid_ptr + rows, bid, mask=rows < num_rows)
            taken += equal
        price = tl.where(full, _key_value(kth), price)
        load = tl.where(full, capacity, bidders)

    # 4. Closing rounds: proposals to the best expert with room, the largest margins accepted.
    for step in range(CLOSING):
        free = tl.where(valid, capacity - load, 0)
        proposals = tl.zeros((E_PAD,), tl.int32)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            in_rows = rows < num_rows
            values = _scores(scores_ptr, rows, cols, num_items, num_experts, low, tie_scale)
            values = tl.where(free[None, :] == 0, float("-inf"), values - price[None, :])
            best, index, second = _top_two(values, cols, E_PAD)
            margin = (best - second) / spread
            margin = tl.where(margin != margin, 0.0, margin)
            margin = tl.minimum(tl.maximum(margin, 0.0), 1.0)
            owner = tl.load(owner_ptr + rows, mask=in_rows, other=0)
            cand = tl.where(in_rows & (owner < 0), index, NO_EXPERT)
            tl.store(cand_ptr + rows, cand, mask=in_rows)
            tl.store(value_ptr + rows, margin, mask=in_rows)
            proposals += tl.sum((cand[:, None] == cols[None, :]).to(tl.int32), 0)
        contested = (proposals > free) & (free > 0)
        k = tl.where(contested, free, 1).to(tl.int64)
        kth, _, need = _select(_SCRATCH, scores_ptr, cand_ptr, value_ptr, num_items, num_rows,
                               num_experts, low, tie_scale, price, k, BLOCK, E_PAD)
        taken = tl.zeros((E_PAD,), tl.int64)
        for start in range(0, num_rows, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            in_rows = rows < num_rows
            cand, margin, member, largest, equal = _largest(cand_ptr, value_ptr, rows, cols,
                                                            num_rows, kth, need, taken)
            accept = member & (free[None, :] > 0) & (~contested[None, :] | largest)
            accepted = tl.sum(accept.to(tl.int32), 1) > 0
            owner = tl.load(owner_ptr + rows, mask=in_rows, other=NO_EXPERT)
            tl.store(owner_ptr + rows, tl.where(accepted, cand, owner), mask=in_rows)
            taken += equal
        load += tl.minimum(proposals, free)

    # 5. The unplaced items, in item order, take the free slots in expert order.
    slot_end = tl.cumsum(tl.where(valid, capacity - load, 0), 0)
    arrived = 0
    for start in range(0, num_rows, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        in_rows = rows < num_rows
        owner = tl.load(owner_ptr + rows, mask=in_rows, other=0)
        unplaced = (in_rows & (owner < 0)).to(tl.int32)
        arrival = tl.cumsum(unplaced, 0) - unplaced + arrived
        slot = tl.sum((valid[None, :] & (slot_end[None, :] <= arrival[:, None])).to(tl.int32), 1)
        slot = tl.minimum(slot, num_experts - 1)
        tl.store(expert_ptr + rows, tl.where(unplaced > 0, slot, owner).to(tl.int64),
                 mask=rows < num_items)
        arrived += tl.sum(unplaced, 0)


def interpreted() -> bool:
    """Whether this process runs Triton kernels in Triton's interpreter (TRITON_INTERPRET=1 when
    this module was imported), on CPU tensors."""
    return not isinstance(_assignment_kernel, triton.runtime.JITFunction)


def assign(scores: torch.Tensor) -> torch.Tensor:
    """(R, N, E) float32 scores, E >= 2 and N >= 1, -> (R, N) long experts, by one launch."""
    num_problems, num_items, num_experts = scores.shape
    capacity = -(-num_items // num_experts)
    num_rows = num_experts * capacity  # items and placeholders
    scores = scores.contiguous()
    expert = torch.empty(num_problems, num_items, dtype=torch.long, device=scores.device)
    owner = torch.empty(num_problems, num_rows, dtype=torch.int32, device=scores.device)
    cand = torch.empty_like(owner)
    bid = torch.empty(num_problems, num_rows, dtype=torch.float32, device=scores.device)
    value = torch.empty_like(bid)
    _assignment_kernel[(num_problems,)](
        scores, expert, owner, bid, cand, value, num_items, num_rows, num_experts, capacity,
        SINKHORN=SINKHORN_ITERATIONS, TEMPERATURE=SINKHORN_TEMPERATURE, PRICE=PRICE_STEPS,
        AUCTION=AUCTION_ROUNDS, EPS=AUCTION_EPS, CLOSING=CLOSING_ROUNDS, TIE=TIE_BREAK,
        BLOCK=BLOCK_INTERPRETED if interpreted() else BLOCK_ON_DEVICE,
        E_PAD=max(2, triton.next_power_of_2(num_experts)),
    )
    return expert
