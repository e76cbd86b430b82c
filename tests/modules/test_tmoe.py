import torch
import torch.nn.functional as F

from fairseq_smlp.modules.routing_figures import reduce_figures
from fairseq_smlp.modules.tmoe import TokenMoE


def per_token_reference(tmoe: TokenMoE, x: torch.Tensor) -> torch.Tensor:
    experts = tmoe.experts
    tokens = x.reshape(-1, x.size(-1))
    out = torch.empty_like(tokens)
    for s, e in enumerate(tmoe.last_assignment[:, 0].tolist()):
        hidden = F.gelu(tokens[s] @ experts.fc1_weight[e] + experts.fc1_bias[e, 0])
        ffn = hidden @ experts.fc2_weight[e] + experts.fc2_bias[e, 0]
        out[s] = torch.sigmoid(tokens[s] @ tmoe.gate.centroids[e]) * ffn
    return out.view_as(x)


def test_training_is_balanced_and_matches_a_per_token_loop():
    torch.manual_seed(0)
    tmoe = TokenMoE(embed_dim=8, ffn_dim=16, num_experts=4)
    with torch.no_grad():
        tmoe.gate.centroids.normal_()
    x = torch.randn(2, 6, 8)
    out = tmoe(x)
    assert torch.bincount(tmoe.last_assignment[:, 0], minlength=4).tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(out, per_token_reference(tmoe, x), rtol=1e-5, atol=1e-5)
    assert float(reduce_figures(tmoe.stats)["load_cv"]) == 0.0


def test_inference_is_greedy_top1():
    torch.manual_seed(0)
    tmoe = TokenMoE(embed_dim=8, ffn_dim=16, num_experts=4).eval()
    with torch.no_grad():
        tmoe.gate.centroids.normal_()
    x = torch.randn(3, 5, 8)
    out = tmoe(x)
    greedy = (x.reshape(-1, 8) @ tmoe.gate.centroids.t()).argmax(-1)
    assert torch.equal(tmoe.last_assignment[:, 0], greedy)
    torch.testing.assert_close(out, per_token_reference(tmoe, x), rtol=1e-5, atol=1e-5)


def test_centroids_and_experts_learn():
    torch.manual_seed(0)
    tmoe = TokenMoE(embed_dim=8, ffn_dim=16, num_experts=4)
    tmoe(torch.randn(2, 6, 8)).square().sum().backward()
    assert tmoe.gate.centroids.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in tmoe.experts.parameters())
    # Replicated on every rank: all-reduced and clipped like shared weights.
    assert not any(hasattr(p, "expert") for p in tmoe.parameters())
