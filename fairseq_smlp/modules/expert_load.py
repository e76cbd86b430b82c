"""Balance figures of an assignment of items to experts, for fairseq's logs."""

import torch


def load_cv(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Coefficient of variation (std / mean) of the number of items per expert: 0 = balanced."""
    load = torch.bincount(expert.reshape(-1), minlength=num_experts).float()
    return load.std(unbiased=False) / load.mean()
