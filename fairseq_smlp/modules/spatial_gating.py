"""gMLP's spatial gating unit, with the spatial projection as a pluggable token mixer."""

from typing import Dict, Optional

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import nn

IncrementalState = Dict[str, Dict[str, Optional[torch.Tensor]]]
# Rows of the first buffer of kept positions when decoding incrementally; it doubles when full.
INITIAL_ROWS = 64


@with_incremental_state
class SpatialGatingUnit(nn.Module):
    """Split the channels into halves (z1, z2) and return ``z1 * mixer(LN(z2))``.

    ``dim`` is the width of the input; the output is ``dim // 2`` wide. ``mixer`` maps
    (B, L, dim // 2) to the same shape along positions: one causal (T x T) projection in gMLP
    (``W LN(z2) + b``), a feature-routing mixture of such projections (sMoE) in sMLP.

    Decoding one position at a time (``incremental_state``, for mixers with ``forward_last``),
    the unit keeps LN(z2) of every past position, all that a causal projection reads of them.
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

    @property
    def decodes_incrementally(self) -> bool:
        return hasattr(self.mixer, "forward_last")

    def forward(self, x: torch.Tensor,
                incremental_state: Optional[IncrementalState] = None) -> torch.Tensor:
        z1, z2 = x.chunk(2, dim=-1)  # (B, L, D/2) each; L = 1 when decoding incrementally
        if incremental_state is None:
            return z1 * self.mixer(self.norm(z2))
        return z1 * self.mixer.forward_last(self.remember(incremental_state, self.norm(z2)))

    def remember(self, incremental_state: IncrementalState, new: torch.Tensor) -> torch.Tensor:
        """Append ``new`` (B, 1, D/2) to the kept past and return the past, (B, t, D/2). The past
        is a view of a buffer that doubles when full: a step writes one row instead of copying
        every past row."""
        cached = self.get_incremental_state(incremental_state, "past")
        if cached is None:
            buffer, length = new.new_empty(new.size(0), INITIAL_ROWS, new.size(2)), 0
        else:
            buffer, length = cached["buffer"], cached["past"].size(1)
            if length == buffer.size(1):
                buffer = torch.cat([buffer, torch.empty_like(buffer)], dim=1)
        buffer[:, length] = new[:, 0]
        self.keep(incremental_state, buffer, length + 1)
        return buffer[:, :length + 1]

    def keep(self, incremental_state: IncrementalState, buffer: torch.Tensor,
             length: int) -> None:
        self.set_incremental_state(incremental_state, "past",
                                   {"buffer": buffer, "past": buffer[:, :length]})

    def reorder_incremental_state(self, incremental_state: IncrementalState,
                                  new_order: torch.Tensor) -> None:
        """Beam search keeps, at each step, the hypotheses ``new_order`` picks (all of them, in
        order, in greedy decoding until one ends: then nothing moves)."""
        cached = self.get_incremental_state(incremental_state, "past")
        if cached is None:
            return
        buffer = cached["buffer"]
        unchanged = torch.arange(buffer.size(0), device=new_order.device)
        if not torch.equal(new_order, unchanged):  # False for another size too
            self.keep(incremental_state, buffer.index_select(0, new_order),
                      cached["past"].size(1))
