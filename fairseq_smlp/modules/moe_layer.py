"""An MoE layer: gate -> dispatch -> experts -> combine, for any gate of gates.py, with its
experts optionally spread over the ranks of a process group (expert parallelism)."""

from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from .all_to_all import all_to_all
from .expert_load import load_cv
from .moe_dispatch import combine, dispatch


def check_expert_count(num_experts: int) -> None:
    if num_experts < 1:
        raise ValueError(f"--moe-expert-count must be at least 1; got {num_experts}")


class MoELayer(nn.Module):
    """Maps (..., D) to (..., D). After each forward, ``gate_loss`` holds the gate's auxiliary
    loss (None for gates without one), ``last_assignment`` the (S, k) expert choices and
    ``stats`` the figures for fairseq's logs: load_cv (balance of the tokens kept), dropped (the
    fraction of choices over capacity) and the gate's own.

    With an ``expert_group`` of W ranks, this rank's ``experts`` are experts
    [rank * E / W, (rank + 1) * E / W) of the E; every rank routes its own tokens and the
    per-expert buffers travel to the experts' ranks and back by all-to-all.
    """

    stats_name = "moe"

    def __init__(self, gate: nn.Module, experts: nn.Module, num_experts: int, expert_group=None):
        super().__init__()
        check_expert_count(num_experts)
        self.expert_group = expert_group
        self.world_size = 1 if expert_group is None else dist.get_world_size(expert_group)
        if num_experts % self.world_size != 0:
            raise ValueError(
                f"--moe-expert-count {num_experts} must be a multiple of the {self.world_size} "
                f"ranks the experts are spread over"
            )
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
        capacity = self.shared_capacity(routing.capacity, tokens.device)
        buffer, slot = dispatch(tokens, routing.expert_index, self.num_experts, capacity)
        output = combine(self.run_experts(buffer), slot, routing.weight)  # (S, D)
        kept = slot >= 0
        chosen = routing.expert_index >= 0  # withdrawn choices (top-2 'random') were never routed
        self.gate_loss = routing.aux_loss
        self.last_assignment = routing.expert_index
        self.stats = {
            "load_cv": load_cv(routing.expert_index[kept], self.num_experts),
            "dropped": 1.0 - kept.sum() / chosen.sum().clamp_min(1),
            **routing.stats,
        }
        return output.view_as(x)

    def shared_capacity(self, capacity: int, device) -> int:
        """All ranks exchange equal (E, C, D) buffers, so they agree on the largest C."""
        if self.world_size == 1:
            return capacity
        largest = torch.tensor([capacity], device=device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.expert_group)
        return int(largest)

    def run_experts(self, buffer: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return self.experts(buffer)
        num_experts, capacity, dim = buffer.shape
        local_experts = num_experts // self.world_size
        received = all_to_all(buffer, self.expert_group)  # (E, C, D): chunk r from rank r
        received = received.view(self.world_size, local_experts, capacity, dim)  # (W, E/W, C, D)
        local = received.transpose(0, 1).reshape(local_experts, -1, dim)  # (E/W, W C, D)
        output = self.experts(local).view(local_experts, self.world_size, capacity, dim)
        output = output.transpose(0, 1).reshape(num_experts, capacity, dim)  # (E, C, D)
        return all_to_all(output, self.expert_group)  # back to the tokens' ranks
