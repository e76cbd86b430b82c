import torch
import torch.nn.functional as F

from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE


def causal_column(weight_e, bias_e, column):
    """One expert applied to one (B, L) column, position by position."""
    out = torch.empty_like(column)
    for t in range(column.size(1)):
        out[:, t] = bias_e[t] + sum(weight_e[t, s] * column[:, s] for s in range(t + 1))
    return out


def randomize(module):
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()


def test_deterministic_equals_a_loop_over_experts_and_columns():
    torch.manual_seed(0)
    smoe = DeterministicSMoE(width=8, num_experts=4, max_positions=6)
    randomize(smoe)
    z = torch.randn(2, 6, 8)
    want = torch.empty_like(z)
    for expert in range(4):
        for column in range(2 * expert, 2 * expert + 2):  # chunk e = columns 2e, 2e + 1
            want[:, :, column] = causal_column(
                smoe.weight[expert], smoe.bias[expert], z[:, :, column]
            )
    torch.testing.assert_close(smoe(z), want, rtol=1e-5, atol=1e-5)


def test_partial_equals_a_loop_over_columns():
    torch.manual_seed(0)
    smoe = PartialPredictionSMoE(width=8, num_experts=4, max_positions=10, context_positions=2)
    randomize(smoe)
    z = torch.randn(3, 10, 8)
    got = smoe(z)
    expert = smoe.last_assignment
    want = torch.empty_like(z)
    for b in range(3):
        for column in range(8):
            e = int(expert[b, column])
            score = z[b, :2, column] @ smoe.router.weight[e]
            want[b, :, column] = torch.sigmoid(score) * causal_column(
                smoe.experts.weight[e], smoe.experts.bias[e], z[b : b + 1, :, column]
            )[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_partial_routing_reads_the_context_positions_only():
    torch.manual_seed(0)
    smoe = PartialPredictionSMoE(width=16, num_experts=4, max_positions=10, context_positions=2)
    randomize(smoe)
    z = torch.randn(4, 10, 16)
    smoe(z)
    routing = smoe.last_assignment.clone()
    later = z.clone()
    later[:, 2:] = torch.randn(4, 8, 16)
    smoe(later)
    assert torch.equal(smoe.last_assignment, routing)
    earlier = z.clone()
    earlier[:, :2] = torch.randn(4, 2, 16)
    smoe(earlier)
    assert not torch.equal(smoe.last_assignment, routing)  # not vacuous


def test_partial_balances_columns_and_trains_the_gate():
    torch.manual_seed(0)
    smoe = PartialPredictionSMoE(width=16, num_experts=4, max_positions=10, context_positions=2)
    z = torch.randn(4, 10, 16)
    smoe(z).square().sum().backward()
    for row in smoe.last_assignment:
        assert torch.bincount(row, minlength=4).tolist() == [4, 4, 4, 4]
    assert smoe.router.weight.grad.abs().sum() > 0
    assert smoe.experts.weight.grad.abs().sum() > 0


def test_partial_accepts_inputs_shorter_than_the_context():
    smoe = PartialPredictionSMoE(width=8, num_experts=2, max_positions=10, context_positions=4)
    assert smoe(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_padding_keeps_scores_finite():
    smoe = PartialPredictionSMoE(width=4, num_experts=2, max_positions=6, context_positions=3)
    out = smoe(F.pad(torch.randn(1, 2, 4), (0, 0, 0, 0)))
    assert torch.isfinite(out).all()
