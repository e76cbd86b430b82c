"""Dispatch tokens to per-expert buffers and combine the expert outputs back: the one routing
path shared by every gate (balanced, top-1, top-2, hash); and the per-expert counts of what was
routed, with their balance figure, computed on the device (no bincount, whose output size
depends on the data).

A gate decides, for each of S tokens and each of its k choices, an expert and a combine weight.
``assign_rows`` gives every choice a row of a buffer, dropping the choices past an expert's capacity
in arrival order (token 0's first choice, ..., then every token's second choice, so a first
choice always takes priority over a second one); ``dispatch`` copies the tokens into their rows
and ``combine`` adds each row's expert output, times its combine weight, to its token. A dropped
choice adds nothing, so with a residual around the layer the token passes through unchanged.
Two buffer layouts:

- padded: (E, C, D), C rows per expert whether used or not, the shape batched matrix products
  and the all-to-all exchange want; C must be known (the gate's, or the largest load). An empty
  row reads zeros and its output goes to a spare token, dropped;
- packed: (k S, D), expert e's rows one after the other, ``group_end`` saying where each ends:
  for grouped matrix products, which take groups of any size, so neither the largest load nor
  any padding is needed. The rows of dropped choices come last, inside the last expert's group
  (a grouped product leaves rows past the last group undefined, and undefined values could reach
  a gradient), and are added with weight 0.

The path is short by design, since on a GPU each operator is a kernel launch: an expert's arrival
rank comes from one cumulative sum over a one-hot of the choices' experts, the packed order from
one stable sort of small integer keys, and rows move by one row gather in and one scatter-add
out. Nothing reads a value back to the host.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class BufferRows:
    # (rows,) the choice each buffer row holds, j * S + s for choice j of token s; k S in an
    # empty row (padded layout only).
    row_choice: torch.Tensor
    # (rows,) the token in each row; S, a spare token, in an empty row (padded layout only)
    row_token: torch.Tensor
    kept: torch.Tensor  # (S, k) whether each choice holds a row: neither withdrawn nor dropped
    load: torch.Tensor  # (E,) choices each expert received, before its capacity
    kept_load: Optional[torch.Tensor]  # (E,) choices each expert holds; None: all of load
    num_experts: int
    capacity: Optional[int]  # padded: rows per expert; packed: None
    row_one_hot: Optional[torch.Tensor] = None  # packed: (rows, E) the expert of each row
    group_end: Optional[torch.Tensor] = None  # packed: (E,) int32 end row of each expert's group


def assign_rows(expert_index: torch.Tensor, num_experts: int, capacity: Optional[int],
                packed: bool = False) -> BufferRows:
    """
    Args:
        expert_index: (S, k) the expert of each token's k choices (k = 1 for top-1); -1 marks a
            choice the gate withdrew (padding, top-2 'random'), which takes no row.
        capacity: choices an expert takes at most; None for no limit (packed layout only, and
            then nothing is dropped: ``kept_load`` is None).
        packed: the packed layout rather than the padded one.
    """
    num_tokens, k = expert_index.shape
    if capacity is None and not packed:
        raise ValueError("the padded layout needs a capacity")
    expert = expert_index.t().reshape(-1)  # (k S,) in arrival order
    received = expert >= 0
    groups = torch.arange(num_experts, device=expert.device)
    one_hot = expert[:, None] == groups  # (k S, E), a withdrawn choice's row all False
    if capacity is None:
        load = one_hot.sum(0)
        kept, kept_load = received, None
    else:
        arrivals = one_hot.cumsum(0)  # (k S, E) choices so far at each expert, inclusive
        arrival = arrivals.gather(1, expert.clamp_min(0)[:, None]).squeeze(1)  # (k S,) 1, 2, ...
        kept = received & (arrival <= capacity)
        load = arrivals[-1] if expert.numel() else one_hot.sum(0)  # (E,)
        kept_load = load.clamp_max(capacity)
    if packed:
        key = expert.masked_fill(kept.logical_not(), num_experts)  # not kept: after the rest
        sorted_key, row_choice = key.sort(stable=True)  # (k S,) rows grouped by expert
        row_expert = sorted_key.clamp_max(num_experts - 1)  # dropped rows join the last group
        group_end = torch.searchsorted(row_expert, groups, right=True,
                                       out_int32=True)  # grouped_mm takes int32 offsets
        row_token = row_choice if k == 1 else row_choice % max(num_tokens, 1)
        return BufferRows(row_choice, row_token, kept.view(k, num_tokens).t(), load, kept_load,
                      num_experts, None, row_expert[:, None] == groups, group_end)
    rows = num_experts * capacity
    row = torch.where(kept, expert * capacity + arrival - 1, rows)  # not kept: a spare row
    choice = torch.arange(expert.numel(), device=expert.device)
    row_choice = torch.full((rows + 1,), expert.numel(), dtype=torch.long, device=expert.device)
    row_choice = row_choice.scatter_(0, row, choice)[:rows]
    row_token = torch.where(row_choice < expert.numel(), row_choice % max(num_tokens, 1),
                            num_tokens)
    return BufferRows(row_choice, row_token, kept.view(k, num_tokens).t(), load, kept_load,
                  num_experts, capacity)


def dispatch(tokens: torch.Tensor, buffer_rows: BufferRows) -> torch.Tensor:
    """(S, D) -> (E, C, D) padded or (k S, D) packed: tokens grouped by expert."""
    if buffer_rows.group_end is not None:
        return tokens.index_select(0, buffer_rows.row_token)  # (k S, D)
    with_spare = F.pad(tokens, (0, 0, 0, 1))  # (S + 1, D): an empty row reads zeros
    buffer = with_spare.index_select(0, buffer_rows.row_token)
    return buffer.view(buffer_rows.num_experts, buffer_rows.capacity, tokens.size(1))


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
    out = rows.new_zeros(num_tokens + padded, rows.size(1))
    if k == 1:  # one row per token at most: weigh after the sum, in token order
        summed = out.index_add_(0, buffer_rows.row_token, rows)
        return (summed[:num_tokens] if padded else summed) * weight  # (S, D)
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


def load_cv(load: torch.Tensor) -> torch.Tensor:
    """Coefficient of variation (std / mean) of the (E,) items per expert: 0 = balanced."""
    std, mean = torch.std_mean(load.float(), correction=0)
    return std / mean.clamp_min(1e-9)
