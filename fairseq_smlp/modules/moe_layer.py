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
from .gates import BalanceTerms, GateDecision, load_balancing_losses
from .moe_dispatch import BufferRows, RoutingConstants, assign_rows, combine, dispatch, expert_load
from .routing_figures import Balance, Dropped, Record


class MoELayer(nn.Module):
    """Maps (..., D) to (..., D), tokens served in the order of the rows: sequence by sequence
    for (B, T, D). After each forward, ``balance_terms`` holds what the gate's auxiliary loss
    needs (None for gates without one; ``gate_loss`` computes it), ``last_assignment`` the
    (S, k) expert choices (E: withdrawn) and ``stats`` what the figures for fairseq's logs need
    (routing_figures.py): load_cv (balance of the tokens kept), dropped (the fraction of choices
    over capacity) and the gate's own.

    ``experts`` is built with all E experts; under a parallel ``placement`` this rank keeps its
    share of them (in an FSDP instance of their own under --ddp-backend fully_sharded), every
    rank routes its own tokens and the per-expert buffers travel to the experts' ranks and back.
    A model computes the auxiliary losses of all its layers together, from each layer's
    ``balance_terms`` (gates.load_balancing_losses).
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
        self.routing_constants = RoutingConstants(num_experts)
        self.balance_terms: Optional[BalanceTerms] = None
        self.last_assignment: Optional[torch.Tensor] = None
        # (E,) the choices each expert received in the last forward, and the capacity that
        # dropped what was over it (None: nothing was dropped).
        self.last_load: Optional[torch.Tensor] = None
        self.last_limit: Optional[int] = None
        self.stats: Dict[str, Record] = {}

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
        if padding is not None:  # in (k, S) layout, which routing reads without a copy
            decision = decision._replace(expert_index=decision.expert_index.t().masked_fill(
                padding, self.num_experts).t())
        if self.runs_choices_directly(decision):
            withdrawn = decision.expert_index == self.num_experts  # weight 0
            output = self.run_choices(tokens, decision.expert_index,
                                      combine_weight(decision, withdrawn))
            load = self.choice_load(decision.expert_index)
            first_load = self.choice_load(decision.expert_index[:, :1])
            limit = None
        else:
            rows = self.buffer_rows(tokens, decision)
            if rows.group_end is not None:
                expert_output = self.experts(dispatch(tokens, rows), rows.row_expert,
                                             rows.group_end)
            else:
                expert_output = run_experts(dispatch(tokens, rows), self.experts, self.placement)
            output = combine(expert_output, rows, combine_weight(decision, rows.left_out))
            load, first_load, limit = rows.load, rows.first_load, rows.limit
        self.balance_terms = (None if decision.prob_mass is None
                              else BalanceTerms(first_load, decision.prob_mass))
        self.last_assignment = decision.expert_index
        self.last_load, self.last_limit = load.detach(), limit
        self.stats = {"load_cv": Balance(self.last_load, limit),
                      "dropped": Dropped(self.last_load, limit), **decision.stats}
        return output.view_as(x)

    @property
    def gate_loss(self) -> Optional[torch.Tensor]:
        """The gate's auxiliary loss in the last forward; None for gates without one."""
        if self.balance_terms is None:
            return None
        return load_balancing_losses([self.balance_terms])[0]

    @property
    def last_kept_load(self) -> Optional[torch.Tensor]:
        """(E,) the choices each expert kept in the last forward."""
        if self.last_load is None or self.last_limit is None:
            return self.last_load
        return self.last_load.clamp_max(self.last_limit)

    def choice_load(self, expert_index: torch.Tensor) -> torch.Tensor:
        """(E,) the choices each expert received, withdrawn ones (E) left out."""
        withdrawn = expert_index == self.num_experts
        return expert_load(expert_index.masked_fill(withdrawn, 0), self.num_experts, withdrawn)

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
        outputs = self.experts.forward_chosen(inputs,
                                              expert.reshape(-1).clamp_max(self.num_experts - 1))
        return torch.einsum("skd,sk->sd", outputs.view(*expert.shape, tokens.size(1)),
                            weight.to(outputs.dtype))

    def buffer_rows(self, tokens: torch.Tensor, decision: GateDecision) -> BufferRows:
        """Buffer rows for the choices: packed where the experts take packed groups, else padded
        to the gate's capacity (or the largest load), the same on every rank of the group."""
        if not self.placement.is_parallel and packed_experts_supported(self.experts, tokens):
            capacity = decision.capacity if decision.may_overflow else None
            return assign_rows(decision.expert_index, self.num_experts, capacity, packed=True,
                               constants=self.routing_constants)
        if tokens.is_cuda and tokens.dtype == torch.float16:
            warnings.warn("in fp16 (--fp16) the MoE layers run on padded buffers, since torch's "
                          "grouped matrix product waits on the host in fp16; --bf16 runs them as "
                          "packed groups, which is faster")
        capacity = decision.capacity
        if capacity is None:  # the largest load: read back to size the padded buffer
            capacity = max(1, int(self.choice_load(decision.expert_index).max()))
        capacity, = group_max([capacity], self.placement, tokens.device)
        return assign_rows(decision.expert_index, self.num_experts, capacity)


def combine_weight(decision: GateDecision, left_out: torch.Tensor) -> torch.Tensor:
    """(S, k) the weight of each choice in the output: the gate's, 0 for the choices ``left_out``
    (dropped or withdrawn), or, for a gate whose weights are its choices' logits, their softmax
    over the choices kept."""
    if decision.weight is None:
        return left_out.logical_not()  # 1 for a kept choice: the combine casts it
    weight = decision.weight
    if decision.softmax_kept:
        lowest = torch.finfo(weight.dtype).min  # finite: a row without a kept choice is no NaN
        weight = weight.masked_fill(left_out, lowest).softmax(1, dtype=torch.float)
    return weight.masked_fill(left_out, 0.0)


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
