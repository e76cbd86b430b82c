"""Gathers whose gradient is another gather: how routing moves tokens and feature columns without
an atomic scatter-add in the backward pass.

For a gather ``out = gather(x, index)``, let ``adjoint`` list, for each entry of ``x``, the
output entries that read it (-1 for none, as many per entry as the most-read one). The gradient
of ``x`` is then the output gradient gathered by ``adjoint`` (and summed, where ``gather`` sums
what it picks): a gather too. torch's own backward of a gather is a scatter-add, which on a GPU
is atomic adds.
"""

from typing import Callable

import torch

Gather = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def adjoint_gather(gather: Gather, x: torch.Tensor, index: torch.Tensor,
                   adjoint: torch.Tensor) -> torch.Tensor:
    """``gather(x, index)``, differentiable in ``x`` through ``gather(grad, adjoint)``."""
    return _AdjointGather.apply(gather, x, index, adjoint)


class _AdjointGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gather, x, index, adjoint):
        ctx.gather = gather
        ctx.save_for_backward(adjoint)
        return gather(x, index)

    @staticmethod
    def backward(ctx, grad):
        adjoint, = ctx.saved_tensors
        return None, ctx.gather(grad.contiguous(), adjoint), None, None
