"""tMoE: token routing over feed-forward experts, the channel mixer of sMLP's sparse blocks.

Routing follows BASE layers (Lewis et al. 2021): tokens are scored against one learned centroid
per expert; training assigns them with balanced load (every expert the same number of tokens, no
auxiliary loss), inference greedily to the best-scoring expert. The sigmoid of the token's score
for its expert scales the expert output, which is how the centroids learn.
"""

import math
from typing import Dict

import torch
from torch import nn

from .balanced_assignment import balanced_assignment
from .expert_load import load_cv
from .experts import BatchedFeedForwardExperts
from .moe_dispatch import combine, dispatch

# BASE layers initialise the expert centroids orthogonally with this gain (fairseq BaseLayer).
CENTROID_INIT_GAIN = 0.1


class TokenMoE(nn.Module):
    stats_name = "tmoe"

    def __init__(self, embed_dim: int, ffn_dim: int, num_experts: int):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"--moe-expert-count must be at least 1; got {num_experts}")
        self.num_experts = num_experts
        centroids = torch.empty(num_experts, embed_dim)
        nn.init.orthogonal_(centroids, gain=CENTROID_INIT_GAIN)
        self.centroids = nn.Parameter(centroids)
        self.experts = BatchedFeedForwardExperts(num_experts, embed_dim, ffn_dim)
        self.last_assignment = None
        self.stats: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.size(-1))  # (S, D)
        affinity = tokens @ self.centroids.t()  # (S, E)
        greedy = affinity.detach().argmax(-1)  # (S,)
        if self.training:
            expert = balanced_assignment(affinity.detach())
            capacity = math.ceil(tokens.size(0) / self.num_experts)
        else:
            expert = greedy
            capacity = int(torch.bincount(expert, minlength=self.num_experts).max())
        weight = torch.sigmoid(affinity.gather(1, expert.unsqueeze(1)))  # (S, 1)
        buffer, slot = dispatch(tokens, expert.unsqueeze(1), self.num_experts, capacity)
        output = combine(self.experts(buffer), slot, weight)  # (S, D)
        self.last_assignment = expert
        self.stats = {
            "load_cv": load_cv(expert, self.num_experts),
            "greedy_load_cv": load_cv(greedy, self.num_experts),
        }
        return output.view_as(x)
