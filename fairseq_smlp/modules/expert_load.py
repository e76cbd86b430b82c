"""The balance figure of an assignment of items to experts, for fairseq's logs. Computed on the
device without reading anything back (no bincount, whose output size depends on the data)."""

import torch

from .grouping import group_counts


def load_cv(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Coefficient of variation (std / mean) of the number of items per expert: 0 = balanced.
    Items marked -1 are left out."""
    load = group_counts(expert.reshape(-1), num_experts).float()
    return load.std(unbiased=False) / load.mean().clamp_min(1e-9)
