"""Dispatch tokens to per-expert buffers and combine the expert outputs back: the one routing
path shared by every gate (balanced, top-1, top-2, hash); and the per-expert counts of what was
routed, with their balance figure, computed on the device (no bincount, whose output size
depends on the data).

A gate decides, for each of S tokens and each of its k choices, an expert and a combine weight;
E (the number of experts) marks a choice the gate withdrew (padding, top-2 'random').
``assign_rows`` gives every choice a row of a buffer, dropping the choices past an expert's
capacity in arrival order (token 0's first choice, ..., then every token's second choice, so a
first choice always takes priority over a second one); ``dispatch`` copies the tokens into their
rows and ``combine`` adds each row's expert output, times its combine weight, to its token. A
dropped choice adds nothing, so with a residual around the layer the token passes through
unchanged. Two buffer layouts:

- padded: (E, C, D), C rows per expert whether used or not, the shape batched matrix products
  and the all-to-all exchange want; C must be known (the gate's, or the largest load). An empty
  row reads zeros and its output goes to a spare token, dropped;
- packed: (k S, D), expert e's rows one after the other, ``group_end`` saying where each ends:
  for grouped matrix products, which take groups of any size, so neither the largest load nor
  any padding is needed. The rows of dropped and withdrawn choices come last, inside the last
  expert's group (a grouped product leaves rows past the last group undefined, and undefined
  values could reach a gradient), and are added with weight 0.

The packed path is short by design, since on a GPU each operator is a kernel launch: a choice's
arrival rank at its expert comes from one cumulative sum over a one-hot of the choices' experts,
the packed order from one stable sort of small integer keys, the group ends from one search;
rows move by one row gather in and one scatter back. The constants it compares against (the
expert ids, the group bounds) are made once, as ``RoutingConstants``. Nothing reads a value back
to the host.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RoutingConstants(nn.Module):
    """The device constants of the packed path for E experts, made once and moved with the
    layer: ``ids`` (E + 1,), the experts and the withdrawn marker E; ``group_bounds`` (E,),
    [1, ..., E - 1, E + 1], the keys below which each expert's group ends (the last one taking
    the rows of dropped choices too)."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        ids = torch.arange(num_experts + 1)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("group_bounds", torch.cat([ids[1:-1], ids[-1:] + 1]),
                             persistent=False)


@dataclass
class BufferRows:
    # (rows,) the choice each buffer row holds, j * S + s for choice j of token s; k S in an
    # empty row (padded layout only).
    row_choice: torch.Tensor
    # (rows,) the token in each row; S, a spare token, in an empty row (padded layout only)
    row_token: torch.Tensor
    left_out: torch.Tensor  # (S, k) whether each choice holds no row: withdrawn or dropped
    load: torch.Tensor  # (E,) float: choices each expert received, before its capacity
    first_load: torch.Tensor  # (E,) float: the first choices each expert received
    num_experts: int
    limit: Optional[int]  # the capacity that dropped choices; None: nothing was dropped
    capacity: Optional[int] = None  # padded: rows per expert; packed: None
    # packed: (rows,) the expert of each row, E for the rows of dropped and withdrawn choices
    row_expert: Optional[torch.Tensor] = None
    group_end: Optional[torch.Tensor] = None  # packed: (E,) int32 end row of each expert's group


def assign_rows(expert_index: torch.Tensor, num_experts: int, capacity: Optional[int],
                packed: bool = False,
                constants: Optional[RoutingConstants] = None) -> BufferRows:
    """
    Args:
        expert_index: (S, k) the expert of each token's k choices (k = 1 for top-1); E marks a
            choice the gate withdrew, which takes no row.
        capacity: choices an expert takes at most; None for no limit (packed layout only, and
            then nothing is dropped).
        packed: the packed layout rather than the padded one.
        constants: the packed path's constants for E experts (made here when not given).
    """
    if capacity is None and not packed:
        raise ValueError("the padded layout needs a capacity")
    if packed:
        return _packed_rows(expert_index, capacity,
                            constants or RoutingConstants(num_experts).to(expert_index.device))
    num_tokens, k = expert_index.shape
    expert = expert_index.t().reshape(-1)  # (k S,) in arrival order
    received = expert < num_experts
    one_hot = expert[:, None] == torch.arange(num_experts, device=expert.device)  # (k S, E)
    arrivals = one_hot.cumsum(0)  # (k S, E) choices so far at each expert, inclusive
    arrival = arrivals.gather(1, expert.clamp_max(num_experts - 1)[:, None]).squeeze(1)
    kept = received & (arrival <= capacity)
    rows = num_experts * capacity
    row = torch.where(kept, expert * capacity + arrival - 1, rows)  # not kept: a spare row
    choice = torch.arange(expert.numel(), device=expert.device)
    row_choice = torch.full((rows + 1,), expert.numel(), dtype=torch.long, device=expert.device)
    row_choice = row_choice.scatter_(0, row, choice)[:rows]
    row_token = torch.where(row_choice < expert.numel(), row_choice % max(num_tokens, 1),
                            num_tokens)
    load = one_hot.sum(0, dtype=torch.float)
    first_load = one_hot[:num_tokens].sum(0, dtype=torch.float) if k > 1 else load
    left_out = kept.logical_not().view(k, num_tokens).t()
    return BufferRows(row_choice, row_token, left_out, load, first_load, num_experts, capacity,
                      capacity)


def _packed_rows(expert_index: torch.Tensor, capacity: Optional[int],
                 constants: RoutingConstants) -> BufferRows:
    num_tokens, k = expert_index.shape
    num_experts = constants.num_experts
    # A (k, S) index transposed to (S, k) (top-2's) reads back as (k S,) without a copy.
    expert = expert_index.t().reshape(-1)  # (k S,) in arrival order
    one_hot = expert[:, None] == constants.ids  # (k S, E + 1), withdrawn in the last column
    if capacity is None:
        key = expert
        counts = one_hot.sum(0, dtype=torch.float)  # (E + 1,)
        first = one_hot[:num_tokens].sum(0, dtype=torch.float) if k > 1 else counts
    else:
        arrivals = one_hot.cumsum(0, dtype=torch.float)  # (k S, E + 1) so far, inclusive
        arrival = arrivals.gather(1, expert[:, None]).squeeze(1)  # (k S,) 1, 2, ...
        key = expert.masked_fill(arrival > capacity, num_experts)  # dropped: E, last
        counts, first = arrivals[-1], arrivals[num_tokens - 1]
    sorted_key, row_choice = key.sort(stable=True)  # (k S,) rows grouped by expert
    group_end = torch.searchsorted(sorted_key, constants.group_bounds,
                                   out_int32=True)  # grouped_mm takes int32 offsets
    row_token = row_choice if k == 1 else row_choice % max(num_tokens, 1)
    left_out = (key == num_experts).view(k, num_tokens).t()
    return BufferRows(row_choice, row_token, left_out, counts[:num_experts], first[:num_experts],
                      num_experts, capacity, None, sorted_key, group_end)


def dispatch(tokens: torch.Tensor, buffer_rows: BufferRows) -> torch.Tensor:
    """(S, D) -> (E, C, D) padded or (k S, D) packed: tokens grouped by expert."""
    if buffer_rows.group_end is not None:
        if buffer_rows.left_out.size(1) == 1:  # one row per token: a permutation of the tokens
            return _PermutedRows.apply(tokens, buffer_rows.row_token)  # (S, D)
        return tokens.index_select(0, buffer_rows.row_token)  # (k S, D)
    with_spare = F.pad(tokens, (0, 0, 0, 1))  # (S + 1, D): an empty row reads zeros
    buffer = with_spare.index_select(0, buffer_rows.row_token)
    return buffer.view(buffer_rows.num_experts, buffer_rows.capacity, tokens.size(1))


class _PermutedRows(torch.autograd.Function):
    """``x.index_select(0, order)`` for a permutation ``order``: every row is read once, so the
    gradient is written back to the rows without a zero fill or an accumulation."""

    @staticmethod
    def forward(ctx, x, order):
        ctx.save_for_backward(order)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        order, = ctx.saved_tensors
        return torch.empty_like(grad).index_copy_(0, order, grad), None


def combine(expert_output: torch.Tensor, buffer_rows: BufferRows,
            weight: torch.Tensor) -> torch.Tensor:
    """(E, C, D) or (k S, D) -> (S, D): the sum over kept choices of weight * expert output.

    Args:
        weight: (S, k) combine weight of each choice, 0 where it is not kept.
    """
    num_tokens, k = weight.shape
    rows = expert_output.reshape(-1, expert_output.size(-1))  # (rows, D)
    weight = weight.to(rows.dtype)
    # Padded: empty rows add into a spare token S, dropped afterwards. Packed: the rows of
    # dropped choices add into their own token, with weight 0.
    padded = buffer_rows.group_end is None
    if not padded:  # a row per choice: the rows are the choices, reordered
        placed = torch.empty_like(rows).index_copy_(0, buffer_rows.row_choice, rows)  # (k S, D)
        if k == 1:
            return placed * weight  # (S, D)
        return (placed.view(k, num_tokens, -1) * weight.t().unsqueeze(2)).sum(0)  # (S, D)
    out = rows.new_zeros(num_tokens + padded, rows.size(1))
    if k == 1:  # one row per token at most: weigh after the sum, in token order
        return out.index_add_(0, buffer_rows.row_token, rows)[:num_tokens] * weight  # (S, D)
    choice_weight = weight.t().reshape(-1)  # (k S,) in arrival order
    if padded:
        choice_weight = F.pad(choice_weight, (0, 1))  # an empty row's weight: 0
    row_weight = choice_weight[buffer_rows.row_choice]  # (rows,)
    summed = out.index_add_(0, buffer_rows.row_token, rows * row_weight[:, None])
    return summed[:num_tokens] if padded else summed  # (S, D)


def expert_load(expert: torch.Tensor, num_experts: int,
                left_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(E,) float: the items of ``expert`` (any shape, values in [0, E)) that each expert
    received, leaving out those that ``left_out`` (bool, the same shape) marks."""
    if left_out is None:
        count = torch.ones_like(expert, dtype=torch.float)
    else:
        count = left_out.logical_not().float()
    return count.new_zeros(num_experts).scatter_add_(0, expert.reshape(-1), count.reshape(-1))
