"""E feed-forward experts evaluated as one batched matrix product."""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class BatchedFeedForwardExperts(nn.Module):
    """E independent FFNs ``W2 act(W1 x + b1) + b2`` applied to an (E, C, D) buffer, expert e to
    row e. Every parameter is stacked along a leading expert dimension, so that an expert
    placement can keep a rank's share of them."""

    def __init__(
        self, num_experts: int, embed_dim: int, ffn_dim: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
    ):
        super().__init__()
        self.activation = activation
        # For the description only: FSDP may hold the parameters as flat shards.
        self.shape = (num_experts, embed_dim, ffn_dim)
        # nn.Linear's default initialisation, per expert.
        bound_in, bound_out = 1 / math.sqrt(embed_dim), 1 / math.sqrt(ffn_dim)
        self.fc1_weight = nn.Parameter(
            torch.empty(num_experts, embed_dim, ffn_dim).uniform_(-bound_in, bound_in)
        )
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, 1, ffn_dim).uniform_(-bound_in, bound_in))
        self.fc2_weight = nn.Parameter(
            torch.empty(num_experts, ffn_dim, embed_dim).uniform_(-bound_out, bound_out)
        )
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, 1, embed_dim).uniform_(-bound_out, bound_out))

    def forward(self, buffer: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(torch.baddbmm(self.fc1_bias, buffer, self.fc1_weight))  # (E, C, F)
        return torch.baddbmm(self.fc2_bias, hidden, self.fc2_weight)  # (E, C, D)

    def extra_repr(self) -> str:
        e, d, f = self.shape
        return f"num_experts={e}, embed_dim={d}, ffn_dim={f}"
