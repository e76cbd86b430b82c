import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from fairseq_smlp.modules.balanced_assignment import AUCTION_EPS, balanced_assignment


def optimal_total(scores: torch.Tensor) -> float:
    """The best balanced assignment, by the Hungarian method over expert slots."""
    num_items, num_experts = scores.shape
    capacity = -(-num_items // num_experts)
    slots = np.repeat(scores.double().numpy(), capacity, axis=1)  # (N, E * capacity)
    rows, cols = linear_sum_assignment(slots, maximize=True)
    return float(slots[rows, cols].sum())


@pytest.mark.parametrize("num_items,num_experts", [(12, 3), (64, 4), (96, 8), (10, 3)])
@pytest.mark.parametrize("skew", [0.0, 3.0])  # skewed: most items prefer the same few experts
def test_balanced_and_near_optimal(num_items, num_experts, skew):
    torch.manual_seed(num_items)
    scores = torch.randn(num_items, num_experts) + skew * torch.randn(1, num_experts)
    expert = balanced_assignment(scores)
    load = torch.bincount(expert, minlength=num_experts)
    assert load.max() <= -(-num_items // num_experts)
    if num_items % num_experts == 0:
        assert load.eq(num_items // num_experts).all()
    total = float(scores.gather(1, expert[:, None]).sum())
    best = optimal_total(scores)
    spread = float(scores.max() - scores.min())
    assert total <= best + 1e-4
    # The auction's guarantee: within N * eps of the optimum, eps = AUCTION_EPS * spread.
    assert best - total <= num_items * AUCTION_EPS * spread


def test_follows_clear_preferences():
    scores = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 0.0], [0.0, 4.0]])
    assert balanced_assignment(scores).tolist() == [0, 1, 0, 1]
    # Everyone prefers expert 0: the two with the largest margin get it.
    scores = torch.tensor([[3.0, 0.0], [1.0, 0.9], [2.0, 0.0], [1.0, 0.95]])
    assert balanced_assignment(scores).tolist() == [0, 1, 0, 1]


def test_batched_rows_are_independent_problems():
    torch.manual_seed(0)
    scores = torch.randn(3, 32, 4)
    batched = balanced_assignment(scores)
    for row in range(3):
        assert torch.equal(batched[row], balanced_assignment(scores[row]))


@pytest.mark.parametrize("scores", [
    torch.tensor([[0.0, float("nan")], [1.0, 0.0]]),
    torch.tensor([[float("inf"), 0.0], [1.0, float("-inf")]]),
    torch.full((64, 4), 1000.0),  # all ties
    1e4 + 1e-3 * torch.randn(64, 4),  # large offset, tiny differences
])
def test_ends_and_balances_on_degenerate_scores(scores):
    expert = balanced_assignment(scores)
    load = torch.bincount(expert, minlength=scores.size(1))
    assert load.max() - load.min() <= 1
