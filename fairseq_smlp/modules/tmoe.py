"""tMoE: token routing over feed-forward experts, the channel mixer of sMLP's sparse blocks.

Routing follows BASE layers (gates.BalancedGate): balanced assignment in training, greedy top-1
in inference, no auxiliary loss.
"""

from typing import Optional

from ..distributed.expert_placement import ExpertPlacement
from .experts import BatchedFeedForwardExperts
from .gates import BalancedGate
from .moe_layer import MoELayer


class TokenMoE(MoELayer):
    stats_name = "tmoe"

    def __init__(self, embed_dim: int, ffn_dim: int, num_experts: int,
                 placement: Optional[ExpertPlacement] = None, compile_routing: bool = False):
        super().__init__(
            BalancedGate(embed_dim, num_experts),
            BatchedFeedForwardExperts(num_experts, embed_dim, ffn_dim),
            num_experts,
            placement,
            compile_routing=compile_routing,
        )
