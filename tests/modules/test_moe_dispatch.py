import functools

import pytest
import torch
from helpers import pack_experts_on_cpu

from fairseq_smlp.modules import experts as experts_module
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.moe_dispatch import assign_rows, combine, dispatch
from fairseq_smlp.modules.routing_figures import reduce_figures


def naive_route(tokens, expert_index, weight, num_experts, capacity, expert_fns):
    """Serve choices one at a time, all first choices before any second one; a choice whose
    expert is full, or withdrawn (E), is dropped."""
    num_tokens, k = expert_index.shape
    load = [0] * num_experts
    out = [torch.zeros_like(tokens[0]) for _ in range(num_tokens)]
    for choice in range(k):
        for token in range(num_tokens):
            e = int(expert_index[token, choice])
            if e < num_experts and load[e] < capacity:
                load[e] += 1
                out[token] = out[token] + weight[token, choice] * expert_fns[e](tokens[token])
    return torch.stack(out)


def routed(tokens, expert_index, weight, num_experts, capacity, expert_fns, packed):
    rows = assign_rows(expert_index, num_experts, capacity, packed)
    buffer = dispatch(tokens, rows)
    weight = weight * rows.left_out.logical_not()
    if packed:
        # The rows of left-out choices (expert E) run through the last expert, weight 0.
        expert = rows.row_expert.clamp_max(num_experts - 1)  # (rows,)
        outputs = torch.stack([expert_fns[e](row) for e, row in zip(expert.tolist(), buffer)])
        return combine(outputs, rows, weight)
    assert buffer.shape == (num_experts, capacity, tokens.size(1))
    outputs = torch.stack([expert_fns[e](buffer[e]) for e in range(num_experts)])
    return combine(outputs, rows, weight)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_dispatch_combine_and_their_gradients_equal_a_per_token_loop(k, packed):
    torch.manual_seed(0)
    num_tokens, dim, num_experts, capacity = 10, 4, 3, 3
    expert_index = torch.randint(0, num_experts, (num_tokens, k))
    expert_index[[1, 6], k - 1] = num_experts  # withdrawn choices take no slot
    scales = torch.randn(num_experts, dim)
    expert_fns = [lambda x, e=e: torch.tanh(x * scales[e]) for e in range(num_experts)]
    tokens = torch.randn(num_tokens, dim, requires_grad=True)
    weight = torch.rand(num_tokens, k, requires_grad=True)
    probe = torch.randn(num_tokens, dim)

    results = []
    for fn in (functools.partial(routed, packed=packed), naive_route):
        out = fn(tokens, expert_index, weight, num_experts, capacity, expert_fns)
        grads = torch.autograd.grad((out * probe).sum(), (tokens, weight))
        results.append((out, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("packed", [False, True])
def test_overflow_drops_later_tokens_first(packed):
    tokens = 1.0 + torch.arange(5.0).unsqueeze(1)  # (S, 1)
    expert_index = torch.zeros(5, 1, dtype=torch.long)  # all to expert 0
    rows = assign_rows(expert_index, num_experts=2, capacity=2, packed=packed)
    buffer = dispatch(tokens, rows)
    assert rows.left_out[:, 0].tolist() == [False, False, True, True, True]
    assert rows.load.tolist() == [5, 0] and rows.limit == 2
    if packed:
        # Expert 0's two rows, then the dropped choices inside the last group.
        assert rows.row_choice.tolist() == [0, 1, 2, 3, 4]
        assert rows.group_end.tolist() == [2, 5]
        assert rows.row_expert.tolist() == [0, 0, 2, 2, 2]  # 2 = E: dropped
    else:
        assert rows.row_choice.tolist() == [0, 1, 5, 5]  # 5 = k S: empty
        assert buffer[0, :, 0].tolist() == [1.0, 2.0]
        assert buffer[1].abs().sum() == 0


@pytest.mark.parametrize("packed", [False, True])
def test_first_choices_take_priority_over_second_choices(packed):
    expert_index = torch.tensor([[1, 0], [0, 1], [0, 1]])
    rows = assign_rows(expert_index, num_experts=2, capacity=2, packed=packed)
    # Expert 0 gets the first choices of tokens 1 and 2 and is then full for token 0's second.
    assert rows.left_out.tolist() == [[False, True], [False, False], [False, True]]
    # Choices j * S + s: expert 0 holds 1 and 2, expert 1 holds 0 and 4.
    held = [1, 2, 0, 4]
    if packed:
        assert rows.row_choice.tolist()[:4] == held and rows.group_end.tolist() == [2, 6]
    else:
        assert rows.row_choice.tolist() == held


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", ["top1", "top2", "balanced", "hash"])
def test_packed_experts_equal_padded_experts(monkeypatch, name, training):
    """Where grouped matrix products are fast (CUDA, bf16) the layer packs its buffer; torch also
    has them on CPU in fp32, which lets the two layouts be compared here."""
    num_experts, dim, vocab = 4, 8, 50
    gates = {
        "top1": lambda: TopKGate(dim, num_experts, 1, capacity_factor=0.75),
        "top2": lambda: TopKGate(dim, num_experts, 2, second_expert_policy="all"),
        "balanced": lambda: BalancedGate(dim, num_experts),
        "hash": lambda: HashGate(vocab, num_experts, seed=3),
    }
    results = []
    for packed in (False, True):
        if packed:
            pack_experts_on_cpu(monkeypatch)
        torch.manual_seed(0)
        layer = MoELayer(gates[name](), BatchedFeedForwardExperts(num_experts, dim, 16),
                         num_experts).train(training)
        assert experts_module.packed_experts_supported(layer.experts, torch.zeros(1)) == packed
        x = torch.randn(2, 20, dim, requires_grad=True)
        token_ids = torch.randint(vocab, (2, 20))
        out = layer(x, token_ids)
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(),
                                    [x, *layer.parameters()])
        results.append((out, *grads))
    for padded, packed in zip(*results):
        torch.testing.assert_close(packed, padded)


@pytest.mark.parametrize("name", ["top1", "top2", "balanced", "hash"])
def test_a_few_tokens_skip_the_buffers_and_get_what_the_buffers_give(name):
    """Without a capacity (inference; hash routing always) a token's output depends on its own
    choices alone, so two tokens run choice by choice through gathered expert weights (k choices
    each, no more than the experts) must get the rows that a batch of 12 holding them gets from
    the buffer path, and the same gradients (hash trains without a capacity)."""
    num_experts, dim, vocab = 4, 8, 50
    gates = {
        "top1": lambda: TopKGate(dim, num_experts, 1),
        "top2": lambda: TopKGate(dim, num_experts, 2, second_expert_policy="all"),
        "balanced": lambda: BalancedGate(dim, num_experts),
        "hash": lambda: HashGate(vocab, num_experts, seed=3),
    }
    torch.manual_seed(0)
    layer = MoELayer(gates[name](), BatchedFeedForwardExperts(num_experts, dim, 16),
                     num_experts).train(name == "hash")
    x = torch.randn(12, dim)
    token_ids = torch.randint(vocab, (12,))
    probe = torch.randn(2, dim)
    results = []
    for rows in (2, 12):
        routing = layer.gate(x[:rows], token_ids[:rows])
        assert layer.runs_choices_directly(routing) == (rows == 2)
        out = layer(x[:rows], token_ids[:rows])
        grads = torch.autograd.grad((out[:2] * probe).sum(), list(layer.parameters()),
                                    allow_unused=True)
        results.append((out[:2], layer.last_assignment[:2], *grads))
    for direct, buffered in zip(*results):
        if direct is not None:
            torch.testing.assert_close(direct, buffered)
    assert float(reduce_figures(layer.stats)["dropped"]) == 0.0
