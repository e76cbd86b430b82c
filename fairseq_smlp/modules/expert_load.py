"""Balance figures of an assignment of items to experts, for fairseq's logs. Computed on the
device without reading anything back (no bincount, whose output size depends on the data)."""

import torch


def expert_counts(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(E,) the number of items per expert; entries outside [0, E) (-1: not routed) count for
    none."""
    expert = expert.reshape(-1)
    expert = torch.where((expert >= 0) & (expert < num_experts), expert, num_experts)
    count = torch.zeros(num_experts + 1, dtype=torch.long, device=expert.device)
    return count.scatter_add_(0, expert, torch.ones_like(expert))[:num_experts]


def load_cv(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Coefficient of variation (std / mean) of the number of items per expert: 0 = balanced.
    Items marked -1 are left out."""
    load = expert_counts(expert, num_experts).float()
    return load.std(unbiased=False) / load.mean().clamp_min(1e-9)
