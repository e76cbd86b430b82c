"""The product of causal (T x T) maps with the columns of (B, L, H) activations, the work of every
spatial projection and sMoE: G maps, map g reading column chunk g (H = G * C),

    y[b, t, g, c] = sum_{s <= t} W[g, t, s] * x[b, s, g, c] + bias[g, t],

optionally on the columns of each sequence taken in another order (the partial-prediction sMoE's
grouping by expert): chunk g is then columns order[b, g C : (g + 1) C] of sequence b, and the
output goes back to the input's column order.

On CPU tensors the product runs as an autograd function with its own backward, laid out for
that device (timed on 2 cores, T = 128, H = 256, batch 8):
- one map (G = 1): one batched product with the map broadcast over the batch, no copy of the
  activations in either direction;
- G maps: the columns are copied into (G, L, B C), matrix g with rows t and columns (b, c),
  as einsum would, but the copy back adds the bias, and with a column order the way in is one
  gather rather than a gather and a copy. (A time-major (L, G, B, C) copy was cheaper on one
  core, but the products reading and writing it ran a third slower on two, and per-sequence
  ``index_select`` did not run in parallel at all);
- the causal mask multiplies the map once in the forward pass and the map's gradient in place
  in the backward pass; maps and biases are taken whole when the input is T long, so autograd
  pads no slice of them.
Elsewhere (GPUs, whose figures were measured with it, CPU autocast, whose casts the autograd
functions would not see, and compiled regions, which optimise the einsum themselves) the plain
einsum below, which the CPU path is tested against.
"""

from typing import Optional

import torch

from .column_permutation import permute_columns
from .cuda_path import takes_cuda_path


def causal_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   mask: torch.Tensor, order: Optional[torch.Tensor] = None,
                   inverse: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, L, H) -> (B, L, H).

    Args:
        weight: (G, L, L) the maps, entries above the diagonal ignored.
        bias: (G, L).
        mask: (L, L) 1 on and below the diagonal, 0 above.
        order: (B, H) optional: chunk g of sequence b is its columns order[b, gC:(g+1)C].
        inverse: (B, H) the inverse permutation of ``order`` (given with it).
    """
    if (x.device.type == "cpu" and not takes_cuda_path(x) and not _autocast_on_cpu()
            and not torch.compiler.is_compiling()):
        if order is None and weight.size(0) == 1:
            return _SharedMap.apply(x, weight, bias, mask)
        return _GroupedMaps.apply(x, weight, bias, mask, order, inverse)
    return reference_causal_product(x, weight, bias, mask, order, inverse)


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def reference_causal_product(x, weight, bias, mask, order=None, inverse=None):
    """The same product with autograd's einsum: the straightforward computation."""
    if order is not None:
        x = permute_columns(x, order, inverse)
    batch, length, width = x.shape
    maps = weight.size(0)
    chunks = x.view(batch, length, maps, width // maps)  # (B, L, G, C)
    mixed = torch.einsum("gts,bsgc->btgc", weight * mask, chunks) + bias.t().unsqueeze(-1)
    mixed = mixed.reshape(batch, length, width)  # (B, L, H)
    return mixed if order is None else permute_columns(mixed, inverse, order)


class _SharedMap(torch.autograd.Function):
    """G = 1: y[b] = (W * mask) x[b] + bias, one batched product over b, W broadcast."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask):
        batch, length, _ = x.shape
        causal = weight[0] * mask  # (L, L)
        y = torch.bmm(causal.expand(batch, length, length), x).add_(bias.view(1, length, 1))
        ctx.save_for_backward(x, causal, mask)
        return y  # (B, L, H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, causal, mask = ctx.saved_tensors
        batch, length, _ = x.shape
        grad_x = torch.bmm(causal.t().expand(batch, length, length), grad)  # (B, L, H)
        # sum_b grad[b] x[b]^T: (B, L, L) products summed, cheaper than copying both operands
        # into (L, B H) for one product.
        grad_weight = torch.bmm(grad, x.transpose(1, 2)).sum(0).mul_(mask)  # (L, L)
        grad_bias = grad.sum((0, 2))  # (L,)
        return grad_x, grad_weight.unsqueeze(0), grad_bias.unsqueeze(0), None


class _GroupedMaps(torch.autograd.Function):
    """G maps on a (G, L, B, C) copy of the columns."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, order, inverse):
        maps = weight.size(0)
        grouped = _to_groups(x, maps, order)  # (G, L, B C)
        causal = weight * mask  # (G, L, L)
        ctx.save_for_backward(grouped, causal, mask, order, inverse)
        return _from_groups(torch.bmm(causal, grouped), x.shape, inverse, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grouped, causal, mask, order, inverse = ctx.saved_tensors
        grad_mixed = _to_groups(grad, causal.size(0), order)  # (G, L, B C)
        grad_weight = torch.bmm(grad_mixed, grouped.transpose(1, 2)).mul_(mask)  # (G, L, L)
        grad_bias = grad_mixed.sum(2)  # (G, L)
        grad_grouped = torch.bmm(causal.transpose(1, 2), grad_mixed)  # (G, L, B C)
        grad_x = _from_groups(grad_grouped, grad.shape, inverse)
        return grad_x, grad_weight, grad_bias, None, None, None


def _to_groups(x: torch.Tensor, maps: int, order: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, L, H) -> (G, L, B C) contiguous: matrix g has rows t and columns (b, c), chunk g of
    the (ordered) columns."""
    batch, length, width = x.shape
    columns = width // maps
    if order is None:
        grouped = x.reshape(batch, length, maps, columns).permute(2, 1, 0, 3).contiguous()
    else:
        # grouped[g, t, b, c] = x[b, t, order[b, g C + c]]: one gather, its source and index
        # broadcast views, in place of a gather over (B, L, H) and a copy.
        source = x.transpose(0, 1).unsqueeze(0).expand(maps, length, batch, width)
        index = order.view(batch, maps, columns).transpose(0, 1).unsqueeze(1)  # (G, 1, B, C)
        grouped = source.gather(3, index.expand(maps, length, batch, columns))
    return grouped.view(maps, length, batch * columns)


def _from_groups(mixed: torch.Tensor, shape: torch.Size, inverse: Optional[torch.Tensor],
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(G, L, B C) -> (B, L, H) in the input's column order, plus bias[g, t] if given, added in
    the copy."""
    batch, length, width = shape
    maps = mixed.size(0)
    columns = width // maps
    chunks = mixed.view(maps, length, batch, columns).permute(2, 1, 0, 3)  # (B, L, G, C)
    out = mixed.new_empty(batch, length, maps, columns)
    if bias is None:
        out.copy_(chunks)
    else:
        torch.add(chunks, bias.t().view(1, length, maps, 1), out=out)
    out = out.view(batch, length, width)
    if inverse is None:
        return out
    return out.gather(2, inverse.unsqueeze(1).expand(batch, length, width))
