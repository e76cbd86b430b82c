import torch

from fairseq_smlp.modules.moe_dispatch import combine, dispatch


def naive_route(tokens, expert_index, weight, num_experts, capacity, expert_fns):
    """Serve choices one at a time, all first choices before any second one; a choice whose
    expert is full is dropped."""
    num_tokens, k = expert_index.shape
    load = [0] * num_experts
    out = torch.zeros_like(tokens)
    for choice in range(k):
        for token in range(num_tokens):
            e = int(expert_index[token, choice])
            if load[e] < capacity:
                load[e] += 1
                out[token] += weight[token, choice] * expert_fns[e](tokens[token])
    return out


def test_dispatch_combine_equals_a_per_token_loop():
    torch.manual_seed(0)
    num_tokens, dim, num_experts, capacity = 10, 4, 3, 3
    tokens = torch.randn(num_tokens, dim)
    expert_index = torch.randint(0, num_experts, (num_tokens, 2))
    weight = torch.rand(num_tokens, 2)
    scales = torch.randn(num_experts, dim)
    expert_fns = [lambda x, e=e: torch.tanh(x * scales[e]) for e in range(num_experts)]

    buffer, slot = dispatch(tokens, expert_index, num_experts, capacity)
    assert buffer.shape == (num_experts, capacity, dim)
    outputs = torch.stack([expert_fns[e](buffer[e]) for e in range(num_experts)])
    got = combine(outputs, slot, weight)
    want = naive_route(tokens, expert_index, weight, num_experts, capacity, expert_fns)
    torch.testing.assert_close(got, want)


def test_overflow_drops_later_tokens_first():
    tokens = torch.arange(5.0).unsqueeze(1)  # (S, 1)
    expert_index = torch.zeros(5, 1, dtype=torch.long)  # all to expert 0
    buffer, slot = dispatch(tokens, expert_index, num_experts=2, capacity=2)
    assert slot[:, 0].tolist() == [0, 1, -1, -1, -1]
    assert buffer[0, :, 0].tolist() == [0.0, 1.0]
    assert buffer[1].abs().sum() == 0
