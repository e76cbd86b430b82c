"""gMLP's spatial gating unit with a causal spatial projection."""

import torch
from torch import nn

from .spatial_projection import CausalSpatialProjection


class SpatialGatingUnit(nn.Module):
    """Split the channels into halves (z1, z2) and return ``z1 * (W LN(z2) + b)``.

    ``dim`` is the width of the input; the output is ``dim // 2`` wide.
    """

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(
                f"the spatial gating unit splits its input into two halves, so its width must be "
                f"even; got {dim}"
            )
        self.norm = nn.LayerNorm(dim // 2)
        self.proj = CausalSpatialProjection(1, max_positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = x.chunk(2, dim=-1)  # (B, L, D/2) each
        gate = self.proj(self.norm(z2).unsqueeze(2)).squeeze(2)  # (B, L, 1, D/2) -> (B, L, D/2)
        return z1 * gate
