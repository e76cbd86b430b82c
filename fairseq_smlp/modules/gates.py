"""MoE gates. Each decides, for S tokens, k expert choices per token, their combine weights, the
per-expert capacity and an auxiliary loss; they differ only in how they choose. The shared
dispatch/combine path (moe_dispatch.py) does the rest.

In inference no gate has a capacity (None), so no token is dropped: dropping depends on which
other tokens share the batch, later positions included, and would break causality.
"""

import math
from types import MappingProxyType
from typing import List, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .balanced_assignment import balanced_assignment
from .moe_dispatch import expert_load
from .routing_figures import Balance, MeanEntropy, Record

SECOND_EXPERT_POLICIES = ("sampling", "all", "random")
# BASE layers initialise the expert centroids orthogonally with this gain (fairseq BaseLayer).
CENTROID_INIT_GAIN = 0.1


class GateDecision(NamedTuple):
    """A gate's decision for S tokens: k expert choices each, their weights, the capacity. A
    tuple whose first item is a tensor: hooks that look for a tensor in a module's output (the
    backward hooks fairseq's NanDetector puts on every module when gradients overflow) find one.
    """

    expert_index: torch.Tensor  # (S, k) long; E (the number of experts): withdrawn
    weight: Optional[torch.Tensor]  # (S, k) combine weight of each choice; None: 1 for all
    capacity: Optional[int]  # slots per expert; None: as many as the largest load
    # (E,) for gates with a load-balancing loss: each expert's gate probability summed over the
    # tokens that are not padding (differentiable); the layer adds the counts of first choices
    # that routing makes (BalanceTerms).
    prob_mass: Optional[torch.Tensor] = None
    stats: Mapping[str, Record] = MappingProxyType({})  # routing_figures.py records
    # The weights are the chosen experts' logits, and each kept choice weighs their softmax over
    # the choices kept after capacity: the gate's probabilities renormalised over them (top-2).
    softmax_kept: bool = False
    # Whether an expert can be chosen more often than its capacity; a gate that never does so
    # (balanced) needs the capacity only to size padded buffers.
    may_overflow: bool = True


class BalanceTerms(NamedTuple):
    """What a layer's GShard / Switch auxiliary loss E * sum_e f_e * P_e needs: f_e the fraction
    of the tokens that are not padding whose first choice is e, P_e the mean gate probability
    of e over them."""

    first_load: torch.Tensor  # (E,) float: the counts behind f
    prob_mass: torch.Tensor  # (E,) the sums behind P (differentiable)


def load_balancing_losses(terms: Sequence[BalanceTerms]) -> List[torch.Tensor]:
    """The auxiliary loss of each layer's ``terms`` (1 when balanced), computed for all layers
    together, so that a step launches the same few operators however many MoE layers there
    are."""
    first = torch.stack([term.first_load for term in terms])  # (L, E)
    mass = torch.stack([term.prob_mass for term in terms])  # (L, E)
    tokens = first.sum(1)  # (L,)
    return list(((first * mass).sum(1) / tokens.square().clamp_min(1) * first.size(1)).unbind(0))


def check_capacity_factor(capacity_factor: float) -> None:
    if not capacity_factor > 0:
        raise ValueError(f"--moe-capacity-factor must be > 0; got {capacity_factor}")


class TopKGate(nn.Module):
    """Softmax gate in fp32 choosing k experts per token: Switch (k = 1, Fedus et al. 2021) and
    GShard (k = 2, Lepikhin et al. 2020).

    Capacity per expert in training is ceil(capacity_factor * k * ceil(S / E)) (GShard's
    2 * ceil(S / E) for k = 2 and factor 1). Top-2 weights are the two probabilities renormalised
    to sum to 1 over the choices that capacity kept, as fairseq's MoE layers do by default: a
    token whose second choice was dropped keeps weight 1 on its first. The second expert follows
    the policy: 'all' always uses it, 'sampling' picks it by sampling (Gumbel noise on the logits,
    training only), 'random' keeps it with probability 2 * its probability and otherwise
    withdraws it, taking no slot (training only).
    """

    def __init__(self, embed_dim: int, num_experts: int, k: int, capacity_factor: float = 1.0,
                 second_expert_policy: str = "sampling"):
        super().__init__()
        check_capacity_factor(capacity_factor)
        if second_expert_policy not in SECOND_EXPERT_POLICIES:
            raise ValueError(
                f"--moe-second-expert-policy must be one of {', '.join(SECOND_EXPERT_POLICIES)}; "
                f"got '{second_expert_policy}'"
            )
        if k not in (1, 2) or num_experts < k:
            raise ValueError(f"a top-{k} gate needs at least {k} experts; got {num_experts}")
        self.k = k
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.second_expert_policy = second_expert_policy
        self.wg = nn.Linear(embed_dim, num_experts, bias=False)

    def forward(self, tokens: torch.Tensor, token_ids=None, padding=None) -> GateDecision:
        # The product in the activations' dtype, the (S, E) softmax in fp32.
        logits = F.linear(tokens, self.wg.weight)  # (S, E)
        probs = logits.softmax(-1, dtype=torch.float)
        top, first = probs.max(-1, keepdim=True)  # (S, 1) each
        real_probs = probs if padding is None else probs.masked_fill(padding[:, None], 0.0)
        stats = {"gate_entropy": MeanEntropy(probs.detach(), padding)}
        if self.k == 1:
            expert_index, weight = first, top
        else:
            expert_index, weight = self.second_choice(logits, probs, first)
        if self.training:
            fair_share = math.ceil(tokens.size(0) / self.num_experts)
            capacity = math.ceil(self.capacity_factor * self.k * fair_share)
        else:
            capacity = None
        return GateDecision(expert_index, weight, capacity, real_probs.sum(0), stats,
                            softmax_kept=self.k == 2)

    def second_choice(self, logits, probs, first):
        """(S, 2) experts and their logits, from the (S, E) logits and probabilities and the
        (S, 1) first choices; both (S, 2) are views of (2, S) tensors, which routing reads
        without a copy."""
        masked = probs.scatter(1, first, -1.0)  # the first choice is never the second
        if self.training and self.second_expert_policy == "sampling":
            # The largest of log p + Gumbel noise: of p / a standard exponential draw.
            masked = masked / torch.empty_like(masked).exponential_()
        second = masked.argmax(-1, keepdim=True)  # (S, 1)
        expert_index = torch.cat([first.t(), second.t()]).t()  # (S, 2)
        chosen = logits.t().gather(0, expert_index.t()).t()  # (S, 2) their logits
        if self.training and self.second_expert_policy == "random":
            second_prob = probs.gather(1, second)
            keep = torch.rand_like(second_prob) < 2 * second_prob
            # A new tensor: the gather above keeps expert_index for its backward pass.
            withdrawn = torch.where(keep, second, self.num_experts)
            expert_index = torch.cat([first.t(), withdrawn.t()]).t()
        return expert_index, chosen


class BalancedGate(nn.Module):
    """BASE layers (Lewis et al. 2021): tokens scored against a learned centroid per expert,
    balanced assignment in training (every expert ceil(S / E) tokens at most, none dropped),
    greedy top-1 in inference, no auxiliary loss; the sigmoid of the token's score for its expert
    is the combine weight, which is how the centroids learn. Inside a Transformer layer it scores
    the residual stream, not the normalised input the experts run on, as fairseq's BaseLayer."""

    routes_on_residual_stream = True

    def __init__(self, embed_dim: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        centroids = torch.empty(num_experts, embed_dim)
        nn.init.orthogonal_(centroids, gain=CENTROID_INIT_GAIN)
        self.centroids = nn.Parameter(centroids)

    def forward(self, tokens: torch.Tensor, token_ids=None, padding=None) -> GateDecision:
        if self.training and tokens.size(0) < self.num_experts:
            raise ValueError(
                f"balanced routing gives every one of the {self.num_experts} experts a share of "
                f"the batch's tokens, but the batch has only {tokens.size(0)}: use fewer experts "
                f"(--moe-expert-count) or larger batches"
            )
        affinity = F.linear(tokens, self.centroids)  # (S, E)
        greedy = affinity.detach().argmax(-1)  # (S,)
        if self.training:
            scores = affinity.detach()
            if padding is not None:
                # The same score for every expert: padding fills whichever slots the real tokens
                # leave, and moves none of them.
                scores = torch.where(padding[:, None], 0.0, scores)
            expert = balanced_assignment(scores)
            capacity = math.ceil(tokens.size(0) / self.num_experts)
        else:
            expert, capacity = greedy, None
        weight = torch.sigmoid(affinity.gather(1, expert.unsqueeze(1)))  # (S, 1)
        stats = {"greedy_load_cv": Balance(expert_load(greedy, self.num_experts, padding))}
        return GateDecision(expert.unsqueeze(1), weight, capacity, None, stats, may_overflow=False)


class HashGate(nn.Module):
    """Hash layers (Roller et al. 2021): a fixed random map from token id to expert, drawn from
    ``seed`` and kept as a buffer so checkpoints carry it. No gate, no auxiliary loss, no
    capacity: nothing is dropped."""

    def __init__(self, vocab_size: int, num_experts: int, seed: int):
        super().__init__()
        self.num_experts = num_experts
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "token_to_expert", torch.randint(num_experts, (vocab_size,), generator=generator)
        )

    def forward(self, tokens: torch.Tensor, token_ids=None, padding=None) -> GateDecision:
        if token_ids is None:
            raise ValueError("hash routing needs the token ids of the tokens it routes")
        expert = self.token_to_expert[token_ids.reshape(-1)].unsqueeze(1)  # (S, 1)
        return GateDecision(expert, None, None)
