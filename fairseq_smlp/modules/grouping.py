"""Counting and ranking items by group (an expert) on the device, without reading a value back to
the host: what routing and the balanced assignment share."""

import torch

# Groups' sort keys are this far apart; priorities within a group must span less.
KEY_STRIDE = 1e9


def group_counts(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(..., N) -> (..., G): the items of each group along the last dim. Entries outside [0, G)
    (-1: none) count for none."""
    group = torch.where((group >= 0) & (group < num_groups), group, num_groups)
    count = group.new_zeros(*group.shape[:-1], num_groups + 1)
    return count.scatter_add_(-1, group, torch.ones_like(group))[..., :num_groups]


def rank_in_group(group: torch.Tensor, priority: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(R, N) rank of each item inside its group (0 = highest priority), groups in [0, G], the
    last a spare one. One sort on (group, -priority) packed into a float64 key."""
    key = group.double() * KEY_STRIDE - priority.double()
    order = key.argsort(dim=1)  # (R, N) items grouped, highest priority first
    count = group_counts(group, num_groups + 1)  # (R, G + 1)
    start = count.cumsum(1) - count  # (R, G + 1) where each group begins in the sorted order
    sorted_group = group.gather(1, order)
    sorted_rank = torch.arange(group.size(1), device=group.device) - start.gather(1, sorted_group)
    return torch.empty_like(sorted_rank).scatter_(1, order, sorted_rank)
