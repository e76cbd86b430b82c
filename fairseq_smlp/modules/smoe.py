"""sMoE: feature (hidden-dimension) routing, the token mixer of sMLP's sparse blocks.

The (B, L, H) input is seen as H feature columns, each a length-L vector over positions. Every
column goes to one of E experts, and an expert is a causal (T x T) spatial projection with its own
weights and bias, like a gMLP spatial gating unit. Outputs go back to their columns. Compute per
token is that of one spatial projection; parameters grow E-fold.
"""

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.expert_placement import ExpertPlacement, group_max, run_experts
from .balanced_assignment import balanced_assignment
from .causal_product import causal_product
from .column_permutation import inverse_permutation, permute_columns
from .compiled_region import CompiledRegion
from .moe_dispatch import expert_load
from .routing_figures import Balance, Record
from .spatial_projection import CausalSpatialProjection


class SpatialExperts(CausalSpatialProjection):
    """E causal spatial maps over (B, L, H) input, column chunk e to map e: the experts of an
    sMoE. Under a parallel ``placement`` this rank holds its share of the maps and the columns
    travel to their maps' ranks and back as rows (padded to the group's largest row count and
    length: padding rows are dropped after, padding positions come last and, the maps being
    causal, change no real position)."""

    def __init__(self, width: int, num_experts: int, max_positions: int,
                 placement: Optional[ExpertPlacement] = None):
        super().__init__(num_experts, max_positions)
        self.num_experts = num_experts
        self.placement = placement or ExpertPlacement(num_experts)

    def forward(self, x: torch.Tensor, order: Optional[torch.Tensor] = None,
                inverse: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H). With ``order`` (B, H), the maps take each sequence's columns
        in that order, chunk e of the ordered columns to map e, and the output comes back in
        x's column order; ``inverse`` is the inverse permutation of ``order``. Callers go through
        the module call, never a method of their own, so that a wrapper placed around the
        experts (an FSDP instance under --ddp-backend fully_sharded) sees every use."""
        if order is not None:
            return self._forward_ordered(x, order, inverse)
        if not self.placement.is_parallel:
            return super().forward(x)
        batch, length, width = x.shape
        columns = width // self.num_experts
        rows = x.view(batch, length, self.num_experts, columns).permute(2, 0, 3, 1)  # (E, B, C, L)
        rows = rows.reshape(self.num_experts, batch * columns, length)
        padded_count, padded_length = group_max([batch * columns, length], self.placement,
                                                x.device)
        rows = F.pad(rows, (0, padded_length - length, 0, padded_count - batch * columns))
        mixed = run_experts(rows, self.forward_rows, self.placement)  # (E, N', L')
        mixed = mixed[:, :batch * columns, :length].view(self.num_experts, batch, columns, length)
        return mixed.permute(1, 3, 0, 2).reshape(batch, length, width)

    def _forward_ordered(self, x: torch.Tensor, order: torch.Tensor,
                         inverse: torch.Tensor) -> torch.Tensor:
        if self.placement.is_parallel:
            grouped = permute_columns(x, order, inverse)  # (B, L, H), chunk e for expert e
            return permute_columns(self(grouped), inverse, order)  # back to column order
        length = x.size(1)
        return causal_product(x, *self.maps(length), self.causal_mask[:length, :length],
                              order, inverse)

    def forward_last(self, past: torch.Tensor) -> torch.Tensor:
        if self.placement.is_parallel:
            raise ValueError("decoding one position at a time needs every expert in one process: "
                             "merge the rank files with python -m "
                             "fairseq_smlp.consolidate_checkpoint and generate from the merge")
        return super().forward_last(past)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_experts={self.num_experts}"


class DeterministicSMoE(SpatialExperts):
    """Deterministic routing: column chunk e goes to expert e, no gate. A function of nothing but
    the column's index, so it leaks nothing; the same as a spatial projection with E maps."""


class PartialPredictionSMoE(nn.Module):
    """Partial-prediction routing: the gate W_r scores each column from its values on the first
    ``context_positions`` positions only, columns are assigned to experts with balanced load
    (every expert gets H / E columns, as in BASE layers), and the sigmoid of the chosen expert's
    score scales that column's output so that W_r is trained. The same rule is used in training
    and inference. Since routing reads only the context positions, every prediction from
    position ``context_positions`` on depends on its past alone.
    """

    stats_name = "smoe"

    def __init__(self, width: int, num_experts: int, max_positions: int, context_positions: int,
                 placement: Optional[ExpertPlacement] = None, compile_routing: bool = False):
        super().__init__()
        self.num_experts = num_experts
        # Router, assignment and experts under torch.compile (compiled_region.py).
        self.compile_routing = compile_routing
        self.region = CompiledRegion(self.route_and_mix)
        self.context_positions = context_positions
        self.router = nn.Linear(context_positions, num_experts, bias=False)  # W_r
        placement = placement or ExpertPlacement(num_experts)
        self.experts = placement.place(SpatialExperts(width, num_experts, max_positions, placement))
        self.last_assignment = None
        self.stats: Dict[str, Record] = {}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.region(z, compiled=self.compile_routing)

    def route_and_mix(self, z: torch.Tensor) -> torch.Tensor:
        context = z[:, : self.context_positions].transpose(1, 2)  # (B, H, min(L, P))
        context = F.pad(context, (0, self.context_positions - context.size(2)))  # (B, H, P)
        scores = self.router(context)  # (B, H, E)
        expert = balanced_assignment(scores)  # (B, H), H / E columns per expert
        gate = torch.sigmoid(scores.gather(2, expert.unsqueeze(-1))).transpose(1, 2)  # (B, 1, H)
        order = expert.argsort(dim=1, stable=True)  # (B, H): expert 0's columns first, ...
        inverse = inverse_permutation(order)
        mixed = self.experts(z, order, inverse)  # (B, L, H)
        self.last_assignment = expert.detach()
        greedy = scores.detach().max(-1).indices  # (B, H)
        self.stats = {"greedy_load_cv": Balance(expert_load(greedy, self.num_experts))}
        return mixed * gate.to(z.dtype)  # (B, L, H)
