import itertools
import math

import pytest
import torch

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.routing_figures import reduce_figures

S, D, E = 6, 3, 3


def hand_batch():
    """Tokens whose gate logits are the tokens themselves (wg = identity)."""
    logits = torch.tensor([
        [2.0, 1.0, 0.0],
        [2.5, 0.0, 1.0],
        [3.0, 0.5, 0.0],
        [0.0, 2.0, 1.5],
        [1.0, 0.0, 2.0],
        [2.0, 1.9, 0.0],
    ])
    return logits


def gate(k, **kwargs):
    g = TopKGate(D, E, k, **kwargs)
    with torch.no_grad():
        g.wg.weight.copy_(torch.eye(D))
    return g


def softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def figure(layer, name):
    return float(reduce_figures(layer.stats)[name])


def test_top1_choice_weights_capacity_and_aux_loss():
    tokens = hand_batch()
    layer = MoELayer(gate(1), BatchedFeedForwardExperts(E, D, 4), E).train()
    layer(tokens)
    routing = layer.gate(tokens)
    probs = [softmax_row(row) for row in tokens.tolist()]
    first = [max(range(E), key=lambda e: p[e]) for p in probs]
    assert first == [0, 0, 0, 1, 2, 0]
    assert routing.expert_index[:, 0].tolist() == first
    torch.testing.assert_close(routing.weight[:, 0],
                               torch.tensor([p[e] for p, e in zip(probs, first)]))
    assert routing.capacity == math.ceil(S / E)  # 2
    f = [first.count(e) / S for e in range(E)]
    mean_p = [sum(p[e] for p in probs) / S for e in range(E)]
    assert math.isclose(float(layer.gate_loss.detach()),
                        E * sum(a * b for a, b in zip(f, mean_p)), rel_tol=1e-5)


def test_top1_layer_drops_later_tokens_over_capacity():
    layer = MoELayer(gate(1), BatchedFeedForwardExperts(E, D, 4), E).train()
    out = layer(hand_batch())
    # Expert 0 is first choice of tokens 0, 1, 2, 5 and holds 2: tokens 2 and 5 are dropped.
    assert out[2].abs().sum() == 0 and out[5].abs().sum() == 0
    assert out[0].abs().sum() > 0 and out[1].abs().sum() > 0
    assert math.isclose(figure(layer, "dropped"), 2 / 6, rel_tol=1e-6)


def test_top2_all_policy_against_a_hand_computation():
    tokens = hand_batch()
    routing = gate(2, second_expert_policy="all").train()(tokens)
    probs = [softmax_row(row) for row in tokens.tolist()]
    pairs = [sorted(range(E), key=lambda e: -p[e])[:2] for p in probs]
    assert routing.expert_index.tolist() == pairs
    # The two logits; the layer takes their softmax over the choices capacity keeps.
    want = [[row[a], row[b]] for row, (a, b) in zip(tokens.tolist(), pairs)]
    torch.testing.assert_close(routing.weight, torch.tensor(want))
    assert routing.softmax_kept and routing.capacity == 2 * math.ceil(S / E)


def test_top2_layer_equals_a_per_token_loop_with_first_choices_first():
    torch.manual_seed(0)
    experts = BatchedFeedForwardExperts(E, D, 4)
    layer = MoELayer(gate(2, second_expert_policy="all", capacity_factor=0.5), experts, E).train()
    tokens = hand_batch()
    out = layer(tokens)
    routing = layer.gate(tokens)
    capacity = routing.capacity  # ceil(0.5 * 2 * 2) = 2
    load, kept = [0] * E, [[] for _ in range(S)]  # kept[s]: (probability, expert output)
    for choice in range(2):
        for s in range(S):
            e = int(routing.expert_index[s, choice])
            if load[e] < capacity:
                load[e] += 1
                hidden = experts.activation(
                    tokens[s] @ experts.fc1_weight[e] + experts.fc1_bias[e, 0])
                ffn = hidden @ experts.fc2_weight[e] + experts.fc2_bias[e, 0]
                # exp(logit): proportional to the probability, which is what renormalises
                kept[s].append((math.exp(float(routing.weight[s, choice])), ffn))
    # The kept choices' probabilities renormalised to sum to 1: weight 1 where one choice is left.
    want = torch.stack([sum(p * ffn for p, ffn in choices) / sum(p for p, _ in choices)
                        if choices else torch.zeros(D) for choices in kept])
    assert any(len(choices) == 1 for choices in kept)  # where the two rules differ
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_second_expert_policies():
    torch.manual_seed(0)
    tokens = torch.randn(400, D)
    sampled = gate(2, second_expert_policy="sampling").train()(tokens).expert_index
    assert (sampled[:, 0] != sampled[:, 1]).all()
    # In inference 'sampling' is deterministic: the second-best expert.
    best_two = gate(2, second_expert_policy="sampling").eval()(tokens).expert_index
    assert torch.equal(best_two, tokens.topk(2, dim=1).indices)
    layer = MoELayer(gate(2, second_expert_policy="random"), BatchedFeedForwardExperts(E, D, 4),
                     E).train()
    layer.gate.capacity_factor = 100.0  # room for everything: nothing is dropped
    layer(tokens)
    assert figure(layer, "dropped") == 0.0  # withdrawn choices are not drops
    withdrawn = gate(2, second_expert_policy="random").train()(tokens)
    second = withdrawn.expert_index[:, 1]
    kept_share = float((second < E).float().mean())
    second_prob = (withdrawn.weight[:, 1] - tokens.logsumexp(1)).exp().detach()
    expected = float((2 * second_prob).clamp(max=1).mean())
    assert abs(kept_share - expected) < 0.08


def test_inference_drops_nothing():
    layer = MoELayer(gate(1), BatchedFeedForwardExperts(E, D, 4), E).eval()
    layer(hand_batch())
    assert figure(layer, "dropped") == 0.0


def test_hash_map_is_seeded_and_saved():
    a, b, c = HashGate(50, 4, seed=7), HashGate(50, 4, seed=7), HashGate(50, 4, seed=8)
    assert torch.equal(a.token_to_expert, b.token_to_expert)
    assert not torch.equal(a.token_to_expert, c.token_to_expert)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.token_to_expert, a.token_to_expert)
    ids = torch.tensor([[3, 9, 3]])
    routing = a(torch.randn(3, 2), ids)
    assert routing.expert_index[:, 0].tolist() == [int(a.token_to_expert[i]) for i in [3, 9, 3]]
    assert routing.prob_mass is None


def test_bad_gate_settings_are_clear_errors():
    with pytest.raises(ValueError, match="--moe-capacity-factor must be > 0; got 0"):
        TopKGate(D, E, 1, capacity_factor=0)
    with pytest.raises(ValueError, match="--moe-second-expert-policy must be one of sampling, "
                                         "all, random; got 'best'"):
        TopKGate(D, E, 2, second_expert_policy="best")
    with pytest.raises(ValueError, match="the batch has only 2"):
        BalancedGate(D, 4).train()(torch.randn(2, D))
    with pytest.raises(ValueError, match="hash routing needs the token ids"):
        HashGate(10, 2, seed=1)(torch.randn(2, D))


def test_random_second_expert_policy_trains():
    layer = MoELayer(gate(2, second_expert_policy="random"), BatchedFeedForwardExperts(E, D, 4),
                     E).train()
    tokens = torch.randn(40, D, requires_grad=True)
    layer(tokens).sum().backward()
    assert layer.gate.wg.weight.grad is not None and tokens.grad is not None


@pytest.mark.parametrize("name", ["top1", "top2", "hash"])
@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_gives_an_empty_output(name, training):
    gates = {"top1": lambda: gate(1), "top2": lambda: gate(2, second_expert_policy="all"),
             "hash": lambda: HashGate(10, E, seed=1)}
    layer = MoELayer(gates[name](), BatchedFeedForwardExperts(E, D, 4), E).train(training)
    tokens = torch.randn(0, D, requires_grad=True)
    out = layer(tokens, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, D)
    out.sum().backward()


# Tokens 0 and 1 of hand_batch() as padding: both would take expert 0's slots.
PADDING = torch.tensor([True, True, False, False, False, False])


def test_padding_takes_no_slot_and_counts_in_neither_the_aux_loss_nor_the_figures():
    layer = MoELayer(gate(1), BatchedFeedForwardExperts(E, D, 4), E).train()
    tokens = hand_batch()
    out = layer(tokens, padding=PADDING)
    # Expert 0 holds 2 (capacity from all 6 positions): the real tokens 2 and 5 now fit.
    assert layer.last_assignment[:, 0].tolist() == [E, E, 0, 1, 2, 0]  # E: withdrawn
    assert (out[:2] == 0).all() and (out[2:].abs().sum(1) > 0).all()
    assert figure(layer, "dropped") == 0
    probs = [softmax_row(row) for row in tokens[2:].tolist()]
    first = [max(range(E), key=lambda e: p[e]) for p in probs]
    f = [first.count(e) / 4 for e in range(E)]
    mean_p = [sum(p[e] for p in probs) / 4 for e in range(E)]
    assert math.isclose(float(layer.gate_loss.detach()),
                        E * sum(a * b for a, b in zip(f, mean_p)), rel_tol=1e-5)


def test_padding_leaves_the_balanced_assignment_of_the_real_tokens_optimal():
    gate_ = BalancedGate(D, E)
    with torch.no_grad():
        gate_.centroids.copy_(torch.eye(D))  # affinity = the tokens themselves
    layer = MoELayer(gate_, BatchedFeedForwardExperts(E, D, 4), E).train()
    tokens = hand_batch()
    layer(tokens, padding=PADDING)
    expert = layer.last_assignment[:, 0].tolist()
    assert expert[:2] == [E, E]
    # Every way of giving the 4 real tokens at most ceil(6 / 3) = 2 per expert, the best total.
    real = tokens[2:].tolist()
    best = max(sum(row[e] for row, e in zip(real, choice))
               for choice in itertools.product(range(E), repeat=4)
               if max(choice.count(e) for e in range(E)) <= 2)
    assert math.isclose(sum(row[e] for row, e in zip(real, expert[2:])), best, rel_tol=1e-6)


def test_hash_routing_leaves_padding_out():
    layer = MoELayer(HashGate(10, E, seed=1), BatchedFeedForwardExperts(E, D, 4), E).train()
    out = layer(hand_batch(), torch.tensor([1, 1, 2, 3, 4, 5]), padding=PADDING)
    assert (layer.last_assignment[:2] == E).all() and (layer.last_assignment[2:] < E).all()
    assert (out[:2] == 0).all()
