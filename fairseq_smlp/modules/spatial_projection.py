"""Causal position-mixing maps: the (T x T) linear layers that replace attention in gMLP."""

from typing import Tuple

import torch
from torch import nn

from .causal_product import causal_product

# gMLP (Liu et al. 2021) initialises the spatial weights "near zero" and the bias to one, so a
# fresh spatial gating unit is close to the identity; lucidrains/g-mlp-pytorch draws the weights
# from U(-eps, eps) with eps = 1e-3 / T, which we follow.
SPATIAL_INIT_EPS = 1e-3


class CausalSpatialProjection(nn.Module):
    """G independent causal spatial maps, one per contiguous chunk of the channels.

    The input (B, L, H) is read as (B, L, G, C) with H = G * C; for L <= T the output is

        y[b, t, g, c] = sum_{s <= t} W[g, t, s] * x[b, s, g, c] + bias[g, t]

    so position t only ever reads positions s <= t. A sequence shorter than T uses the top-left
    (L x L) block of each map, which gives the same outputs as the same prefix inside a longer
    sequence.

    With G = 1 this is the spatial projection of a gMLP spatial gating unit; with G = E it is E
    experts, chunk e going to expert e (deterministic sMoE), at the cost of one (G = 1) map.
    """

    def __init__(self, num_maps: int, max_positions: int):
        super().__init__()
        self.num_maps = num_maps
        self.max_positions = max_positions
        eps = SPATIAL_INIT_EPS / max_positions
        weight = torch.empty(num_maps, max_positions, max_positions).uniform_(-eps, eps)
        self.weight = nn.Parameter(torch.tril(weight))
        self.bias = nn.Parameter(torch.ones(num_maps, max_positions))
        # A product with this mask, where torch.tril is several times slower on CPU; derived
        # from max_positions, so left out of checkpoints.
        self.register_buffer("causal_mask", torch.ones(max_positions, max_positions).tril(),
                             persistent=False)

    def causal_weight(self, length: int) -> torch.Tensor:
        """(G, L, L): the causal mask, entries above the diagonal (s > t) never contribute."""
        weight, _ = self.maps(length)
        return weight * self.causal_mask[:length, :length]

    def maps(self, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weights (G, L, L) and biases (G, L) for inputs of length L, unmasked; the whole
        parameters when L = T, so that autograd pads no slice of them in every step."""
        if length == self.max_positions:
            return self.weight, self.bias
        return self.weight[:, :length, :length], self.bias[:, :length]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.size(1)
        mask = self.causal_mask[:length, :length]
        return causal_product(x, *self.maps(length), mask)  # (B, L, H)

    def forward_last(self, past: torch.Tensor) -> torch.Tensor:
        """The output at the last of the t positions of ``past`` (B, t, H), which is all it
        reads: (B, 1, H). One step of incremental decoding, O(t H) work."""
        batch, length, width = past.shape
        row = self.weight[:, length - 1, :length]  # (G, t): s <= t - 1, inside the triangle
        if self.num_maps == 1:  # a plain product, several times cheaper to launch than einsum
            return torch.matmul(row, past) + self.bias[0, length - 1]  # (B, 1, H)
        chunks = past.view(batch, length, self.num_maps, width // self.num_maps)  # (B, t, G, C)
        mixed = torch.einsum("gs,bsgc->bgc", row, chunks) + self.bias[:, length - 1, None]
        return mixed.reshape(batch, 1, width)

    def forward_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The same maps on map-major rows: (G, N, L), map g applied to each of the N length-L
        rows of rows[g] (a column of some sequence), as one batched matrix product."""
        length = rows.size(2)
        bias = self.bias[:, None, :length]  # (G, 1, L)
        return torch.baddbmm(bias, rows, self.causal_weight(length).transpose(1, 2))  # (G, N, L)

    def extra_repr(self) -> str:
        return f"num_maps={self.num_maps}, max_positions={self.max_positions}"
