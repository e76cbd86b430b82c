"""The gMLP block: ``x + V(SGU(GELU(U LN(x))))``."""

import torch
import torch.nn.functional as F
from fairseq.modules import FairseqDropout
from torch import nn

from .spatial_gating import SpatialGatingUnit


class GmlpBlock(nn.Module):
    """``mixer`` is the spatial gating unit's token mixer over ``ffn_dim // 2`` channels."""

    def __init__(self, embed_dim: int, ffn_dim: int, mixer: nn.Module, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.proj_in = nn.Linear(embed_dim, ffn_dim)  # U
        self.sgu = SpatialGatingUnit(ffn_dim, mixer)
        self.proj_out = nn.Linear(ffn_dim // 2, embed_dim)  # V
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)

    def forward(self, x: torch.Tensor, incremental_state=None, padding=None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). ``padding`` (B, L) is what every block of an all-MLP model
        receives; a dense block treats every position alike and leaves it."""
        hidden = F.gelu(self.proj_in(self.norm(x)))  # (B, L, ffn_dim)
        return x + self.dropout(self.proj_out(self.sgu(hidden, incremental_state)))
