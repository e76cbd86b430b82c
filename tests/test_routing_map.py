"""The counts behind the routing picture, against a routing made by hand."""

import torch
from torch import nn

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import GateDecision
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.routing_map import ExpertCounts, plot, routing_counts


class FixedGate(nn.Module):
    """Sends token s to expert EXPERTS[s], with a capacity of 2 tokens an expert."""

    EXPERTS = [0, 0, 0, 1, 2, 0]

    def forward(self, tokens, token_ids=None, padding=None):
        expert = torch.tensor(self.EXPERTS)[:, None]
        return GateDecision(expert, torch.ones(expert.shape), capacity=2)


def test_counts_are_the_tokens_and_columns_each_expert_took(tmp_path):
    moe = MoELayer(FixedGate(), BatchedFeedForwardExperts(4, 8, 16), 4).train()
    moe(torch.randn(6, 8))
    smoe = PartialPredictionSMoE(width=8, num_experts=2, max_positions=6, context_positions=2)
    smoe(torch.randn(3, 6, 8))
    counts = routing_counts([nn.ModuleList([moe]), nn.ModuleList([smoe])])
    # Expert 0 is chosen by tokens 0, 1, 2 and 5 and holds two; experts 1 and 2 take one each.
    # Balanced feature routing: 3 sequences x 8 columns, half to each expert.
    assert counts == [ExpertCounts("layer0.moe", "tokens", [2, 1, 1, 0], 2),
                      ExpertCounts("layer1.smoe", "feature columns", [12, 12], 0)]
    assert counts[0].dropped_share == 2 / 6
    plot(counts, "hand-made", tmp_path / "routing.png")
    assert (tmp_path / "routing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
