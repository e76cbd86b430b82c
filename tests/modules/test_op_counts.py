"""The operators a training step of each routing and mixing layer launches on the path CUDA
takes stay within benchmarks/op_counts.py's budgets: a change that adds launches fails here."""

import sys
from pathlib import Path

import pytest
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import op_counts  # noqa: E402


@pytest.mark.parametrize("name", list(op_counts.BUDGETS))
def test_a_training_step_stays_within_its_operator_budget(name):
    seen = op_counts.training_step_operators(op_counts.layers()[name]())
    assert sum(seen.values()) <= op_counts.BUDGETS[name], seen


class ScaleAndShift(nn.Module):
    def forward(self, x):
        return x * 2 + 1


class Reshape(nn.Module):
    def forward(self, x):
        return x.view(-1, x.size(-1)).t().unsqueeze(0).squeeze(0).t().view(x.shape)


def test_the_count_sees_kernels_and_leaves_out_views():
    """The loss's own operators are in every count; x * 2 + 1 adds a product and a sum forward
    and one product backward (the sum passes its gradient on as it is)."""
    views = sum(op_counts.training_step_operators(Reshape()).values())
    kernels = op_counts.training_step_operators(ScaleAndShift())
    assert sum(kernels.values()) == views + 3
    assert kernels["mul"] >= 2 and kernels["add"] >= 1
