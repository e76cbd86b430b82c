"""An MoE layer: gate -> dispatch -> experts -> combine, for any gate of gates.py, with its
experts optionally spread over ranks (expert parallelism, distributed/expert_placement.py); a few
tokens that nothing can drop (decoding) skip the buffers and run choice by choice."""

import warnings
from typing import Dict, Optional

import torch
from torch import nn

from ..distributed.expert_placement import ExpertPlacement, group_max, run_experts
from .compiled_region import CompiledRegion
from .expert_load import expert_load, load_cv
from .experts import BatchedFeedForwardExperts, packed_experts_supported
from .gates import Routing
from .moe_dispatch import Routes, combine, dispatch, route


class MoELayer(nn.Module):
    """Maps (..., D) to (..., D). After each forward, ``gate_loss`` holds the gate's auxiliary
    loss (None for gates without one), ``last_assignment`` the (S, k) expert choices and
    ``stats`` the figures for fairseq's logs: load_cv (balance of the tokens kept), dropped (the
    fraction of choices over capacity) and the gate's own.

    ``experts`` is built with all E experts; under a parallel ``placement`` this rank keeps its
    share of them (in an FSDP instance of their own under --ddp-backend fully_sharded), every
    rank routes its own tokens and the per-expert buffers travel to the experts' ranks and back.
    """

    stats_name = "moe"

    def __init__(self, gate: nn.Module, experts: nn.Module, num_experts: int,
                 placement: Optional[ExpertPlacement] = None, time_major: bool = False,
                 compile_routing: bool = False):
        super().__init__()
        self.time_major = time_major
        # Gate, routing, experts and combine under torch.compile (compiled_region.py).
        self.compile_routing = compile_routing
        self.region = CompiledRegion(self.route_and_run)
        self.placement = placement or ExpertPlacement(num_experts)
        if self.placement.num_experts != num_experts:
            raise ValueError(
                f"the placement is for {self.placement.num_experts} experts, the layer has "
                f"{num_experts}"
            )
        self.gate = gate
        self.experts = self.placement.place(experts)
        self.num_experts = num_experts
        # Token ids of the tokens the next forward routes, for gates that need them (hash), when
        # the caller cannot pass them (inside fairseq's Transformer layer).
        self.token_ids: Optional[torch.Tensor] = None
        # What the gate scores in place of the next forward's input, same shape, for gates that
        # route on another tensor than the experts run on (BASE on the residual stream).
        self.routing_input: Optional[torch.Tensor] = None
        # (B, T) True at the padding positions of the next forward's tokens, set by the model
        # that knows them: padding takes no expert slot and counts in no loss or figure.
        self.padding: Optional[torch.Tensor] = None
        self.gate_loss: Optional[torch.Tensor] = None
        self.last_assignment: Optional[torch.Tensor] = None
        # (E,) the choices each expert received in the last forward, and those it kept.
        self.last_load: Optional[torch.Tensor] = None
        self.last_kept_load: Optional[torch.Tensor] = None
        self.stats: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(..., D) -> (..., D), tokens served in the order of the rows: sequence by sequence
        for (B, T, D). A layer built ``time_major`` (inside fairseq's decoder) takes (T, B, D)
        and serves it sequence by sequence all the same, so that capacity drops whole trailing
        sequences, as fairseq's MoE layers do, rather than the last positions of every sequence;
        its ``token_ids`` are (B, T)."""
        scored = self.routing_input
        if scored is not None and scored.shape != x.shape:
            raise ValueError(f"the gate's input has shape {tuple(scored.shape)}, the layer's "
                             f"{tuple(x.shape)}")
        token_ids = self.token_ids if token_ids is None else token_ids
        padding = None if self.padding is None else self.padding.reshape(-1)  # (S,)
        if self.time_major:
            scored = None if scored is None else scored.transpose(0, 1)
            return self.region(x.transpose(0, 1), scored, token_ids, padding,
                               compiled=self.compile_routing).transpose(0, 1)
        return self.region(x, scored, token_ids, padding, compiled=self.compile_routing)

    def route_and_run(self, x: torch.Tensor, scored: Optional[torch.Tensor],
                      token_ids: Optional[torch.Tensor],
                      padding: Optional[torch.Tensor]) -> torch.Tensor:
        """``scored``: what the gate scores, shaped as x; None: x itself. ``padding``: (S,)
        True at the padding positions, batch-major."""
        tokens = x.reshape(-1, x.size(-1))  # (S, D), batch-major
        # A time-major x is copied once into tokens; the gate reads that copy, not a second.
        gate_input = tokens if scored is None else scored.reshape(tokens.shape)
        if padding is not None and padding.numel() != tokens.size(0):
            raise ValueError(f"the padding mask has {padding.numel()} positions, the layer's "
                             f"input {tokens.size(0)} tokens")
        routing = self.gate(gate_input, token_ids, padding)
        if padding is not None:
            routing.expert_index = routing.expert_index.masked_fill(padding[:, None], -1)
        if self.runs_choices_directly(routing):
            kept = routing.expert_index >= 0  # withdrawn (padding, top-2 'random'): weight 0
            output = self.run_choices(tokens, routing.expert_index,
                                      combine_weight(routing, kept))
            load = kept_load = self.choice_load(routing)  # nothing dropped
        else:
            routes = self.route(tokens, routing)
            if routes.group_end is not None:
                expert_output = self.experts(dispatch(tokens, routes), routes.row_one_hot,
                                             routes.group_end)
            else:
                expert_output = run_experts(dispatch(tokens, routes), self.experts,
                                            self.placement)
            output = combine(expert_output, routes, combine_weight(routing, routes.kept))  # (S, D)
            load = routes.load
            kept_load = load if routes.kept_load is None else routes.kept_load
        self.gate_loss = routing.aux_loss
        self.last_assignment = routing.expert_index
        self.last_load, self.last_kept_load = load.detach(), kept_load.detach()
        with torch.no_grad():
            if kept_load is load:  # nothing could be dropped
                dropped = torch.zeros((), device=x.device)
            else:
                dropped = 1.0 - kept_load.sum() / load.sum().clamp_min(1)
            self.stats = {"load_cv": load_cv(kept_load), "dropped": dropped, **routing.stats}
        return output.view_as(x)

    def choice_load(self, routing: Routing) -> torch.Tensor:
        """(E,) the choices each expert received, withdrawn ones (-1) left out."""
        expert = routing.expert_index
        return expert_load(expert.clamp_min(0), self.num_experts, expert < 0)

    def runs_choices_directly(self, routing: Routing) -> bool:
        """Whether to skip the buffers and run each choice through its expert's gathered
        weights: when no choice can be dropped (no capacity), the experts are all here, and the
        choices are no more than the experts (decoding a few tokens at a time)."""
        return (routing.capacity is None and not self.placement.is_parallel
                and isinstance(self.experts, BatchedFeedForwardExperts)
                and routing.expert_index.numel() <= self.num_experts)

    def run_choices(self, tokens: torch.Tensor, expert: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
        """(S, D) tokens, (S, k) experts and weights (0 for withdrawn choices) -> (S, D): the
        weighted sum of each token's choices, computed choice by choice."""
        k = expert.size(1)
        inputs = tokens.unsqueeze(1).expand(-1, k, -1).reshape(-1, tokens.size(1))  # (S k, D)
        outputs = self.experts.forward_chosen(inputs, expert.reshape(-1).clamp_min(0))
        return torch.einsum("skd,sk->sd", outputs.view(*expert.shape, tokens.size(1)),
                            weight.to(outputs.dtype))

    def route(self, tokens: torch.Tensor, routing: Routing) -> Routes:
        """Buffer rows for the choices: packed where the experts take packed groups, else padded
        to the gate's capacity (or the largest load), the same on every rank of the group."""
        if not self.placement.is_parallel and packed_experts_supported(self.experts, tokens):
            capacity = routing.capacity if routing.may_overflow else None
            return route(routing.expert_index, self.num_experts, capacity, packed=True)
        if tokens.is_cuda and tokens.dtype == torch.float16:
            warnings.warn("in fp16 (--fp16) the MoE layers run on padded buffers, since torch's "
                          "grouped matrix product waits on the host in fp16; --bf16 runs them as "
                          "packed groups, which is faster")
        capacity = routing.capacity
        if capacity is None:  # the largest load: read back to size the padded buffer
            capacity = max(1, int(self.choice_load(routing).max()))
        capacity, = group_max([capacity], self.placement, tokens.device)
        return route(routing.expert_index, self.num_experts, capacity)


def combine_weight(routing: Routing, kept: torch.Tensor) -> torch.Tensor:
    """(S, k) the weight of each choice in the output: the gate's, 0 where the choice was
    dropped or withdrawn, renormalised over the kept choices where the gate asks for it."""
    if routing.weight is None:
        return kept  # 1 for a kept choice: the combine casts it to the activations' dtype
    weight = routing.weight * kept
    if routing.normalize_kept:
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-9)
    return weight
