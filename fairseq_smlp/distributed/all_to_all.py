"""All-to-all with equal splits, differentiable: how experts on different ranks exchange tokens."""

import torch
import torch.distributed as dist


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, x):
        ctx.group = group
        x = x.contiguous()
        output = torch.empty_like(x)  # contiguous like x: the exchange fills it in memory order
        dist.all_to_all_single(output, x, group=group)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        # The exchange is a permutation of chunks; its transpose is the same exchange.
        return None, _AllToAll.apply(ctx.group, grad_output)


def all_to_all(x: torch.Tensor, group=None) -> torch.Tensor:
    """Split ``x`` along dim 0 into W equal chunks (W the group's size); chunk r goes to rank r,
    and chunk r of the result is what rank r sent here."""
    return _AllToAll.apply(group, x)
