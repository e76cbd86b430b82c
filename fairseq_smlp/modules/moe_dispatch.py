"""Dispatch tokens to per-expert buffers and combine the expert outputs back: the one routing
path shared by every gate (balanced, top-1, top-2, hash).

A gate decides, for each of S tokens and each of its k choices, an expert and a combine weight;
``dispatch`` packs the tokens into an (E, C, D) buffer with a fixed capacity C per expert (the
shape experts and all-to-all want), dropping tokens past capacity in token order; ``combine``
sums each token's expert outputs, weighted. A dropped choice contributes nothing, so with a
residual around the layer the token passes through unchanged.
"""

from typing import Tuple

import torch
import torch.nn.functional as F


def dispatch(
    tokens: torch.Tensor, expert_index: torch.Tensor, num_experts: int, capacity: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Args:
        tokens: (S, D).
        expert_index: (S, k) the expert of each token's k choices (k = 1 for top-1); -1 marks a
            choice the gate withdrew, which takes no slot.
    Returns:
        buffer: (E, C, D) tokens grouped by expert, zero in unused slots.
        slot: (S, k) the flat slot e * C + c of each choice in the buffer, -1 where dropped.
    Choices are served in order (token 0's first choice, ..., then every token's second
    choice), so a first choice always takes priority over any second choice.
    """
    num_tokens, k = expert_index.shape
    choice_major = expert_index.t().reshape(-1)  # (k S,): all first choices, then second
    chosen = choice_major >= 0
    one_hot = F.one_hot(choice_major.clamp_min(0), num_experts) * chosen.unsqueeze(1)  # (k S, E)
    position = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (k S,) arrival rank at its expert
    kept = chosen & (position < capacity)
    slot = torch.where(kept, choice_major * capacity + position, torch.full_like(position, -1))
    buffer = tokens.new_zeros(num_experts * capacity, tokens.size(1))
    source = torch.arange(num_tokens, device=tokens.device).repeat(k)  # token of each choice
    buffer[slot[kept]] = tokens[source[kept]]
    return buffer.view(num_experts, capacity, -1), slot.view(k, num_tokens).t()


def combine(expert_output: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """
    Args:
        expert_output: (E, C, D).
        slot: (S, k) from ``dispatch``.
        weight: (S, k) combine weight of each choice.
    Returns:
        (S, D): sum over kept choices of weight * expert output.
    """
    flat = expert_output.reshape(-1, expert_output.size(-1))  # (E C, D)
    kept = slot >= 0
    gathered = flat[slot.clamp_min(0)]  # (S, k, D)
    return (gathered * (weight * kept).unsqueeze(-1)).sum(1)
