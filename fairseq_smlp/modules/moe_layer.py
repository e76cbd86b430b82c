"""An MoE layer: gate -> dispatch -> experts -> combine, for any gate of gates.py."""

from typing import Dict, Optional

import torch
from torch import nn

from .expert_load import load_cv
from .moe_dispatch import combine, dispatch


class MoELayer(nn.Module):
    """Maps (..., D) to (..., D). After each forward, ``gate_loss`` holds the gate's auxiliary
    loss (None for gates without one), ``last_assignment`` the (S, k) expert choices and
    ``stats`` the figures for fairseq's logs: load_cv (balance of the tokens kept), dropped (the
    fraction of choices over capacity) and the gate's own."""

    stats_name = "moe"

    def __init__(self, gate: nn.Module, experts: nn.Module, num_experts: int):
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.num_experts = num_experts
        # Token ids of the tokens the next forward routes, for gates that need them (hash), when
        # the caller cannot pass them (inside fairseq's Transformer layer).
        self.token_ids: Optional[torch.Tensor] = None
        self.gate_loss: Optional[torch.Tensor] = None
        self.last_assignment: Optional[torch.Tensor] = None
        self.stats: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = x.reshape(-1, x.size(-1))  # (S, D)
        routing = self.gate(tokens, self.token_ids if token_ids is None else token_ids)
        buffer, slot = dispatch(tokens, routing.expert_index, self.num_experts, routing.capacity)
        output = combine(self.experts(buffer), slot, routing.weight)  # (S, D)
        kept = slot >= 0
        self.gate_loss = routing.aux_loss
        self.last_assignment = routing.expert_index
        self.stats = {
            "load_cv": load_cv(routing.expert_index[kept], self.num_experts),
            "dropped": 1.0 - kept.float().mean(),
            **routing.stats,
        }
        return output.view_as(x)
