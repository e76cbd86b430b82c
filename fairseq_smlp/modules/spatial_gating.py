"""gMLP's spatial gating unit, with the spatial projection as a pluggable token mixer."""

import torch
from torch import nn


class SpatialGatingUnit(nn.Module):
    """Split the channels into halves (z1, z2) and return ``z1 * mixer(LN(z2))``.

    ``dim`` is the width of the input; the output is ``dim // 2`` wide. ``mixer`` maps
    (B, L, dim // 2) to the same shape along positions: one causal (T x T) projection in gMLP
    (``W LN(z2) + b``), a feature-routing mixture of such projections (sMoE) in sMLP.
    """

    def __init__(self, dim: int, mixer: nn.Module):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(
                f"the spatial gating unit splits its input into two halves, so its width must be "
                f"even; got {dim}"
            )
        self.norm = nn.LayerNorm(dim // 2)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = x.chunk(2, dim=-1)  # (B, L, D/2) each
        return z1 * self.mixer(self.norm(z2))
