"""Dispatch tokens to per-expert buffers and combine the expert outputs back: the one routing
path shared by every gate (balanced, top-1, top-2, hash).

A gate decides, for each of S tokens and each of its k choices, an expert and a combine weight.
``route`` gives every choice a slot in a buffer by sorting the choices on their expert, dropping
choices past the capacity in token order; ``dispatch`` packs the tokens into the buffer and
``combine`` sums each token's expert outputs, weighted. A dropped choice contributes nothing, so
with a residual around the layer the token passes through unchanged. Two buffer layouts:

- padded: (E, C, D), C slots per expert whether used or not, the shape batched matrix products
  and the all-to-all exchange want; C must be known (the gate's, or the largest load);
- packed: (k S, D), expert e's rows one after the other, ``group_end`` saying where each ends:
  for grouped matrix products, which take groups of any size, so neither the largest load nor
  any padding is needed. Rows of dropped choices, zero, close the last group (a grouped product
  leaves rows past the last group undefined, and undefined values could reach a gradient); their
  outputs are never read.

Nothing here reads a value back to the host: routes are built from sorts, cumulative sums and
scatters, and both directions move rows by index gathers whose gradients are gathers too (the
two index maps are each other's inverse; adjoint_gather.py), never by boolean masks.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from .adjoint_gather import adjoint_gather
from .grouping import group_counts, rank_in_group


@dataclass
class Routes:
    slot: torch.Tensor  # (S, k) buffer row of each choice, -1 where dropped
    slot_choice: torch.Tensor  # (rows,) the choice (s * k + j) in each row, -1 where empty
    num_experts: int
    capacity: Optional[int]  # padded: slots per expert; packed: None
    group_end: Optional[torch.Tensor] = None  # packed: (E,) int32 end row of each expert's group

    @property
    def slot_token(self) -> torch.Tensor:
        """(rows,) the token in each slot, -1 where empty."""
        k = self.slot.size(1)
        return torch.where(self.slot_choice >= 0, self.slot_choice // k, -1)


def route(expert_index: torch.Tensor, num_experts: int, capacity: Optional[int],
          packed: bool = False) -> Routes:
    """
    Args:
        expert_index: (S, k) the expert of each token's k choices (k = 1 for top-1); -1 marks a
            choice the gate withdrew, which takes no slot.
        capacity: choices an expert takes at most; None for no limit (packed layout only).
        packed: the packed layout rather than the padded one.
    Choices are served in order (token 0's first choice, ..., then every token's second
    choice), so a first choice always takes priority over any second choice.
    """
    num_tokens, k = expert_index.shape
    if capacity is None and not packed:
        raise ValueError("the padded layout needs a capacity")
    expert = expert_index.t().reshape(-1)  # (k S,): all first choices, then second
    expert = torch.where(expert >= 0, expert, num_experts)  # withdrawn: a spare group E
    arrival = torch.arange(expert.numel(), device=expert.device)
    # (k S,) rank at its expert, in arrival order
    position = rank_in_group(expert[None], -arrival[None], num_experts)[0]
    count = group_counts(expert, num_experts)  # (E,)
    kept = expert < num_experts
    if capacity is not None:
        kept &= position < capacity
    if packed:
        rows = expert.numel()
        taken = count if capacity is None else count.clamp_max(capacity)
        group_end = taken.cumsum(0)  # (E,)
        row = (group_end - taken)[expert.clamp_max(num_experts - 1)] + position
        group_end[-1:].fill_(rows)  # (not [-1] = rows: that copies a host value over)
        group_end = group_end.int()  # grouped_mm takes int32 offsets
    else:
        rows, group_end = num_experts * capacity, None
        row = expert * capacity + position
    row = torch.where(kept, row, rows)  # choices that take no row go to a spare one
    choice = (arrival % num_tokens) * k + arrival // num_tokens  # (k S,) index into (S, k)
    slot_choice = torch.full((rows + 1,), -1, dtype=torch.long, device=expert.device)
    slot_choice = slot_choice.scatter_(0, row, choice)[:rows]
    slot = torch.where(kept, row, -1).view(k, num_tokens).t()  # (S, k)
    return Routes(slot, slot_choice, num_experts, None if packed else capacity, group_end)


def dispatch(tokens: torch.Tensor, routes: Routes) -> torch.Tensor:
    """(S, D) -> (E, C, D) padded or (k S, D) packed: tokens grouped by expert, zero in empty
    rows."""
    buffer = adjoint_gather(gather_sum, tokens, routes.slot_token[:, None], routes.slot)
    if routes.group_end is not None:
        return buffer
    return buffer.view(routes.num_experts, routes.capacity, tokens.size(1))


def combine(expert_output: torch.Tensor, routes: Routes, weight: torch.Tensor) -> torch.Tensor:
    """(E, C, D) or (k S, D) -> (S, D): the sum over kept choices of weight * expert output.

    Args:
        weight: (S, k) combine weight of each choice.
    """
    flat = expert_output.reshape(-1, expert_output.size(-1))  # (rows, D)
    choices = adjoint_gather(gather_sum, flat, routes.slot.reshape(-1, 1),
                             routes.slot_choice[:, None])  # (S k, D)
    if weight.size(1) == 1:
        return choices * weight  # (S, D)
    return (choices.view(*weight.shape, flat.size(1)) * weight.unsqueeze(-1)).sum(1)  # (S, D)


def gather_sum(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(M, D) rows, (R, J) index -> (R, D): out[r] = sum_j rows[index[r, j]], -1 adding nothing."""
    if rows.size(0) == 0:  # an empty batch: every index is -1
        return rows.new_zeros(index.size(0), rows.size(1))
    picked = rows.index_select(0, index.clamp_min(0).reshape(-1))
    # Zeroed by a product with the 0/1 mask: a broadcast masked_fill_ is several times slower on
    # CPU. A non-finite rows[0] would leave NaN in the rows that read it for -1, but it makes the
    # loss non-finite anyway, and fairseq then skips the step.
    picked = picked.view(*index.shape, rows.size(1)).mul_(
        (index >= 0).unsqueeze(-1).to(rows.dtype))  # (R, J, D)
    return picked.squeeze(1) if index.size(1) == 1 else picked.sum(1)
