"""How many items each expert received, and the balance figure of those counts for fairseq's logs.
Computed on the device without reading anything back (no bincount, whose output size depends on
the data)."""

from typing import Optional

import torch


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
