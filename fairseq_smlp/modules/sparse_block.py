"""sMLP's sparse block: sMoE token mixing, then tMoE channel mixing."""

import torch
from fairseq.modules import FairseqDropout
from torch import nn

from .gmlp_block import GmlpBlock


class SparseMlpBlock(nn.Module):
    """``x = x + V(z1 * sMoE(LN(z2)))`` (a gMLP block whose spatial projection is the sMoE),
    then ``x + tMoE(LN(x))``: sMoE stands where attention or the SGU would, tMoE where the
    FFN would."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, smoe: nn.Module, tmoe: nn.Module, dropout: float
    ):
        super().__init__()
        self.token_mixing = GmlpBlock(embed_dim, ffn_dim, smoe, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.tmoe = tmoe
        self.dropout = FairseqDropout(dropout, module_name=type(self).__name__)

    def forward(self, x: torch.Tensor, incremental_state=None, padding=None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); ``padding`` (B, L) True at padding positions, which take no
        tMoE slot."""
        # In inference the tMoE routes each token on its own: it keeps nothing between steps.
        x = self.token_mixing(x, incremental_state)
        return x + self.dropout(self.tmoe(self.norm(x), padding=padding))
