"""A per-sequence permutation of the feature columns of (B, L, H) activations: how the sMoE
groups each sequence's columns by expert, and puts them back.

Both directions are gathers along H, and the gradient of each is the gather by the inverse
permutation (adjoint_gather.py), so no atomic scatter-add runs in the backward pass.
"""

import torch

from .adjoint_gather import adjoint_gather


def permute_columns(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(B, L, H) -> (B, L, H): out[b, :, j] = x[b, :, order[b, j]].

    Args:
        order: (B, H) a permutation of the columns of each sequence.
        inverse: (B, H) its inverse: inverse[b, order[b, j]] = j.
    """
    return adjoint_gather(_gather_columns, x, order, inverse)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """(B, H) -> (B, H), the inverse of each row's permutation."""
    positions = torch.arange(order.size(1), device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _gather_columns(x, index):
    return x.gather(2, index.unsqueeze(1).expand(-1, x.size(1), -1))  # (B, L, H)
