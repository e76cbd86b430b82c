"""An MoE layer: gate -> dispatch -> experts -> combine, for any gate of gates.py, with its
experts optionally spread over ranks (expert parallelism, distributed/expert_placement.py); a few
tokens that nothing can drop (decoding) skip the buffers and run choice by choice.

Reading order for one layer: gates.py (the gate's decision), moe_dispatch.py (buffer rows,
dispatch, combine, per-expert counts), this file.
"""

import warnings
from typing import Dict, Optional

import torch
from torch import nn

from ..distributed.expert_placement import ExpertPlacement, group_max, run_experts
from .compiled_region import CompiledRegion
from .experts import BatchedFeedForwardExperts, packed_experts_supported
from .gates import GateDecision
from .moe_dispatch import BufferRows, assign_rows, combine, dispatch, expert_load, load_cv


class MoELayer(nn.Module):
    """Maps (..., D) to (..., D), tokens served in the order of the rows: sequence by sequence
    for (B, T, D). After each forward, ``gate_loss`` holds the gate's auxiliary loss (None for
    gates without one), ``last_assignment`` the (S, k) expert choices and ``stats`` the figures
    for fairseq's logs: load_cv (balance of the tokens kept), dropped (the fraction of choices
    over capacity) and the gate's own.

    ``experts`` is built with all E experts; under a parallel ``placement`` this rank keeps its
    share of them (in an FSDP instance of their own under --ddp-backend fully_sharded), every
    rank routes its own tokens and the per-expert buffers travel to the experts' ranks and back.
    """

    stats_name = "moe"

    def __init__(self, gate: nn.Module, experts: nn.Module, num_experts: int,
                 placement: Optional[ExpertPlacement] = None, compile_routing: bool = False):
        super().__init__()
        # Gate, routing, experts and combine under torch.compile (compiled_region.py).
        self.compile_routing = compile_routing
        self.region = CompiledRegion(self.gate_dispatch_combine)
        self.placement = placement or ExpertPlacement(num_experts)
        if self.placement.num_experts != num_experts:
            raise ValueError(
                f"the placement is for {self.placement.num_experts} experts, the layer has "
                f"{num_experts}"
            )
        self.gate = gate
        self.experts = self.placement.place(experts)
        self.num_experts = num_experts
        self.gate_loss: Optional[torch.Tensor] = None
        self.last_assignment: Optional[torch.Tensor] = None
        # (E,) the choices each expert received in the last forward, and those it kept.
        self.last_load: Optional[torch.Tensor] = None
        self.last_kept_load: Optional[torch.Tensor] = None
        self.stats: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None,
                padding: Optional[torch.Tensor] = None,
                routing_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (..., D) the tokens the experts run on.
            token_ids: (...) the token id of each, for gates that route on them (hash).
            padding: (...) True at padding positions: padding takes no expert slot and counts
                in no loss or figure.
            routing_input: what the gate scores in place of ``x``, shaped as x, for gates that
                route on another tensor than the experts run on (BASE on the residual stream).
        """
        if routing_input is not None and routing_input.shape != x.shape:
            raise ValueError(f"the gate's input has shape {tuple(routing_input.shape)}, the "
                             f"layer's {tuple(x.shape)}")
        padding = None if padding is None else padding.reshape(-1)  # (S,)
        return self.region(x, routing_input, token_ids, padding, compiled=self.compile_routing)

    def gate_dispatch_combine(self, x: torch.Tensor, routing_input: Optional[torch.Tensor],
                              token_ids: Optional[torch.Tensor],
                              padding: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer inside its region; ``padding``: (S,), batch-major."""
        tokens = x.reshape(-1, x.size(-1))  # (S, D), batch-major
        # A time-major x is copied once into tokens; the gate reads that copy, not a second.
        gate_input = tokens if routing_input is None else routing_input.reshape(tokens.shape)
        if padding is not None and padding.numel() != tokens.size(0):
            raise ValueError(f"the padding mask has {padding.numel()} positions, the layer's "
                             f"input {tokens.size(0)} tokens")
        decision = self.gate(gate_input, token_ids, padding)
        if padding is not None:
            decision = decision._replace(
                expert_index=decision.expert_index.masked_fill(padding[:, None], -1))
        if self.runs_choices_directly(decision):
            kept = decision.expert_index >= 0  # withdrawn (padding, top-2 'random'): weight 0
            output = self.run_choices(tokens, decision.expert_index,
                                      combine_weight(decision, kept))
            load = kept_load = self.choice_load(decision)  # nothing dropped
        else:
            rows = self.buffer_rows(tokens, decision)
            if rows.group_end is not None:
                expert_output = self.experts(dispatch(tokens, rows), rows.row_one_hot,
                                             rows.group_end)
            else:
                expert_output = run_experts(dispatch(tokens, rows), self.experts, self.placement)
            output = combine(expert_output, rows, combine_weight(decision, rows.kept))  # (S, D)
            load = rows.load
            kept_load = load if rows.kept_load is None else rows.kept_load
        self.gate_loss = decision.aux_loss
        self.last_assignment = decision.expert_index
        self.last_load, self.last_kept_load = load.detach(), kept_load.detach()
        with torch.no_grad():
            if kept_load is load:  # nothing could be dropped
                dropped = torch.zeros((), device=x.device)
            else:
                dropped = 1.0 - kept_load.sum() / load.sum().clamp_min(1)
            self.stats = {"load_cv": load_cv(kept_load), "dropped": dropped, **decision.stats}
        return output.view_as(x)

    def choice_load(self, decision: GateDecision) -> torch.Tensor:
        """(E,) the choices each expert received, withdrawn ones (-1) left out."""
        expert = decision.expert_index
        return expert_load(expert.clamp_min(0), self.num_experts, expert < 0)

    def runs_choices_directly(self, decision: GateDecision) -> bool:
        """Whether to skip the buffers and run each choice through its expert's gathered
        weights: when no choice can be dropped (no capacity), the experts are all here, and the
        choices are no more than the experts (decoding a few tokens at a time)."""
        return (decision.capacity is None and not self.placement.is_parallel
                and isinstance(self.experts, BatchedFeedForwardExperts)
                and decision.expert_index.numel() <= self.num_experts)

    def run_choices(self, tokens: torch.Tensor, expert: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
        """(S, D) tokens, (S, k) experts and weights (0 for withdrawn choices) -> (S, D): the
        weighted sum of each token's choices, computed choice by choice."""
        k = expert.size(1)
        inputs = tokens.unsqueeze(1).expand(-1, k, -1).reshape(-1, tokens.size(1))  # (S k, D)
        outputs = self.experts.forward_chosen(inputs, expert.reshape(-1).clamp_min(0))
        return torch.einsum("skd,sk->sd", outputs.view(*expert.shape, tokens.size(1)),
                            weight.to(outputs.dtype))

    def buffer_rows(self, tokens: torch.Tensor, decision: GateDecision) -> BufferRows:
        """Buffer rows for the choices: packed where the experts take packed groups, else padded
        to the gate's capacity (or the largest load), the same on every rank of the group."""
        if not self.placement.is_parallel and packed_experts_supported(self.experts, tokens):
            capacity = decision.capacity if decision.may_overflow else None
            return assign_rows(decision.expert_index, self.num_experts, capacity, packed=True)
        if tokens.is_cuda and tokens.dtype == torch.float16:
            warnings.warn("in fp16 (--fp16) the MoE layers run on padded buffers, since torch's "
                          "grouped matrix product waits on the host in fp16; --bf16 runs them as "
                          "packed groups, which is faster")
        capacity = decision.capacity
        if capacity is None:  # the largest load: read back to size the padded buffer
            capacity = max(1, int(self.choice_load(decision).max()))
        capacity, = group_max([capacity], self.placement, tokens.device)
        return assign_rows(decision.expert_index, self.num_experts, capacity)


def combine_weight(decision: GateDecision, kept: torch.Tensor) -> torch.Tensor:
    """(S, k) the weight of each choice in the output: the gate's, 0 where the choice was
    dropped or withdrawn, renormalised over the kept choices where the gate asks for it."""
    if decision.weight is None:
        return kept  # 1 for a kept choice: the combine casts it to the activations' dtype
    weight = decision.weight * kept
    if decision.normalize_kept:
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-9)
    return weight


class FairseqFFNMoE(MoELayer):
    """An MoE layer in the place of a fairseq Transformer layer's fc2, which fairseq's layer calls
    with its (T, B, D) input alone: the one adapter between fairseq's call and MoELayer.forward.
    The model hands over what the call lacks before each forward (``token_ids`` and ``padding``,
    (B, T), from a hook on the token embedding; ``routing_input``, (T, B, D), from a hook on the
    FFN block's norm), and the layer serves the tokens sequence by sequence, so that capacity
    drops whole trailing sequences, as fairseq's MoE layers do, rather than the last positions of
    every sequence."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_ids: Optional[torch.Tensor] = None
        self.padding: Optional[torch.Tensor] = None
        self.routing_input: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, B, D) -> (T, B, D)."""
        routing_input = None if self.routing_input is None else self.routing_input.transpose(0, 1)
        return super().forward(x.transpose(0, 1), self.token_ids, self.padding,
                               routing_input).transpose(0, 1)
