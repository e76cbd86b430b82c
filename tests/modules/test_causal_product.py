"""The CPU layouts of the causal product against autograd's einsum and a loop over positions."""

import pytest
import torch

from fairseq_smlp.modules.causal_product import causal_product, reference_causal_product
from fairseq_smlp.modules.column_permutation import inverse_permutation


def problem(maps, batch=3, length=7, columns=2, ordered=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = maps * columns
    x = torch.randn(batch, length, width, generator=generator, dtype=torch.float64)
    weight = torch.randn(maps, length, length, generator=generator, dtype=torch.float64)
    bias = torch.randn(maps, length, generator=generator, dtype=torch.float64)
    mask = torch.ones(length, length, dtype=torch.float64).tril()
    order = inverse = None
    if ordered:
        order = torch.stack([torch.randperm(width, generator=generator) for _ in range(batch)])
        inverse = inverse_permutation(order)
    return x, weight, bias, mask, order, inverse


def output_and_grads(function, x, weight, bias, mask, order, inverse, grad):
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = function(*leaves, mask, order, inverse)
    out.backward(grad)
    return [out.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("maps", [1, 4])
@pytest.mark.parametrize("ordered", [False, True])
def test_cpu_layouts_match_einsum_with_their_gradients(maps, ordered):
    x, weight, bias, mask, order, inverse = problem(maps, ordered=ordered)
    grad = torch.randn(x.shape, dtype=x.dtype)
    got = output_and_grads(causal_product, x, weight, bias, mask, order, inverse, grad)
    want = output_and_grads(reference_causal_product, x, weight, bias, mask, order, inverse, grad)
    for name, g, w in zip(["output", "x", "weight", "bias"], got, want):
        torch.testing.assert_close(g, w, msg=name)


@pytest.mark.parametrize("maps", [1, 4])
@pytest.mark.parametrize("ordered", [False, True])
def test_cpu_layouts_match_a_loop_over_positions(maps, ordered):
    x, weight, bias, mask, order, inverse = problem(maps, ordered=ordered, seed=1)
    batch, length, width = x.shape
    columns = width // maps
    want = torch.empty_like(x)
    for b in range(batch):
        for position in range(width):
            j = position if order is None else int(inverse[b, position])  # its ordered place
            g = j // columns
            for t in range(length):
                want[b, t, position] = bias[g, t] + sum(
                    weight[g, t, s] * x[b, s, position] for s in range(t + 1))
    torch.testing.assert_close(causal_product(x, weight, bias, mask, order, inverse), want)


@pytest.mark.parametrize("maps", [1, 4])
def test_no_gradient_above_the_diagonal_and_none_from_the_future(maps):
    x, weight, bias, mask, order, inverse = problem(maps, ordered=maps > 1)
    weight.requires_grad_()
    x.requires_grad_()
    out = causal_product(x, weight, bias, mask, order, inverse)
    out[:, 3].sum().backward()
    assert (weight.grad.triu(1) == 0).all()
    assert (x.grad[:, 4:] == 0).all() and (x.grad[:, :4] != 0).any()


def test_non_contiguous_gradients():
    x, weight, bias, mask, order, inverse = problem(4)
    grad = torch.randn(x.size(2), x.size(1), x.size(0), dtype=x.dtype).permute(2, 1, 0)
    got = output_and_grads(causal_product, x, weight, bias, mask, order, inverse, grad)
    want = output_and_grads(reference_causal_product, x, weight, bias, mask, order, inverse, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("maps", [1, 4])
@pytest.mark.parametrize("ordered", [False, True])
def test_cpu_autocast_gives_the_einsums_outputs_and_gradients(maps, ordered):
    x, weight, bias, mask, order, inverse = (
        t if t is None or not t.is_floating_point() else t.float()
        for t in problem(maps, ordered=ordered))
    grad = torch.randn(x.shape)
    results = []
    for function in (causal_product, reference_causal_product):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
            out = function(*leaves, mask, order, inverse)
        out.backward(grad.to(out.dtype))
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    for name, g, w in zip(["output", "x", "weight", "bias"], *results):
        assert g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, msg=name)
