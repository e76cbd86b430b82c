"""The product of causal (T x T) maps with the columns of (B, L, H) activations, the work of every
spatial projection and sMoE: G maps, map g reading column chunk g (H = G * C),

    y[b, t, g, c] = sum_{s <= t} W[g, t, s] * x[b, s, g, c] + bias[g, t],

optionally on the columns of each sequence taken in another order (the partial-prediction sMoE's
grouping by expert): chunk g is then columns order[b, g C : (g + 1) C] of sequence b, and the
output goes back to the input's column order.

On CPU tensors the product runs as an autograd function with its own backward, laid out for
that device (timed on one core, T = 128, H = 256, batch 8):
- one map (G = 1): one batched product with the map broadcast over the batch, no copy of the
  activations in either direction;
- G maps: the columns are copied once into a time-major (L, G, B, C) buffer, which the batched
  product over the maps reads in place (matrix g is rows t, columns (b, c)); the copy out adds
  the bias. Copying into (G, L, B, C), as einsum does, was three times slower: its inner loop
  runs over C = 16 values. With a column order, the product is written time-major too, and
  both ways are selections of columns (``index_select``), each sequence's order folded into
  the column index: a third to a half faster than gathers;
- the causal mask multiplies the map once in the forward pass and the map's gradient in place
  in the backward pass; maps and biases are taken whole when the input is T long, so autograd
  pads no slice of them.
Elsewhere (GPUs, whose figures were measured with it) the plain einsum below, which the CPU
path is tested against.
"""

from typing import Optional

import torch

from .column_permutation import permute_columns


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
    if x.device.type == "cpu":
        if order is None and weight.size(0) == 1:
            return _SharedMap.apply(x, weight, bias, mask)
        return _GroupedMaps.apply(x, weight, bias, mask, order, inverse)
    return reference_causal_product(x, weight, bias, mask, order, inverse)


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
    """G maps on a time-major (L, G, B, C) copy of the columns."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, order, inverse):
        maps = weight.size(0)
        grouped = _to_groups(x, maps, order)  # (L, G, B, C)
        causal = weight * mask  # (G, L, L)
        ctx.save_for_backward(grouped, causal, mask, order, inverse)
        if order is None:
            mixed = torch.bmm(causal, _as_matrices(grouped))  # (G, L, B C)
            return _from_groups(mixed, x.shape, bias)
        mixed = _product_time_major(causal, grouped)  # (L, G, B, C)
        mixed.add_(bias.t()[:, :, None, None])
        return _ungroup_ordered(mixed, inverse)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grouped, causal, mask, order, inverse = ctx.saved_tensors
        maps = causal.size(0)
        grad_mixed = _to_groups(grad, maps, order)  # (L, G, B, C)
        grad_matrices = _as_matrices(grad_mixed)  # (G, L, B C)
        grad_weight = torch.bmm(grad_matrices, _as_matrices(grouped).transpose(1, 2))
        grad_weight.mul_(mask)  # (G, L, L)
        grad_bias = grad_mixed.sum((2, 3)).t()  # (G, L)
        if order is None:
            grad_grouped = torch.bmm(causal.transpose(1, 2), grad_matrices)  # (G, L, B C)
            grad_x = _from_groups(grad_grouped, grad.shape)
        else:
            grad_x = _ungroup_ordered(_product_time_major(causal.transpose(1, 2), grad_mixed),
                                      inverse)
        return grad_x, grad_weight, grad_bias, None, None, None


def _to_groups(x: torch.Tensor, maps: int, order: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, L, H) -> (L, G, B, C) contiguous, chunk g (of the ordered columns) at [:, g]."""
    batch, length, width = x.shape
    columns = width // maps
    if order is None:
        grouped = x.new_empty(length, maps, batch, columns)
        return grouped.copy_(x.reshape(batch, length, maps, columns).permute(1, 2, 0, 3))
    # grouped[t, g, b, c] = x[b, t, order[b, g C + c]]: a time-major copy (rows of H values),
    # then one selection of columns from each time step's B H values. One gather from the
    # (B, L, H) input took half as long again.
    place = order.view(batch, maps, columns).transpose(0, 1)  # (G, B, C)
    place = place + torch.arange(batch, device=order.device)[None, :, None] * width
    time_major = x.transpose(0, 1).reshape(length, batch * width)  # (L, B H)
    return time_major.index_select(1, place.reshape(-1)).view(length, maps, batch, columns)


def _as_matrices(grouped: torch.Tensor) -> torch.Tensor:
    """(L, G, B, C) -> (G, L, B C), a view: matrix g has rows t and columns (b, c)."""
    length, maps, batch, columns = grouped.shape
    return grouped.view(length, maps, batch * columns).transpose(0, 1)


def _from_groups(mixed: torch.Tensor, shape: torch.Size,
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(G, L, B C) -> (B, L, H), plus bias[g, t] if given, in the copy."""
    batch, length, width = shape
    maps = mixed.size(0)
    columns = width // maps
    chunks = mixed.view(maps, length, batch, columns).permute(2, 1, 0, 3)  # (B, L, G, C)
    out = mixed.new_empty(batch, length, maps, columns)
    if bias is None:
        out.copy_(chunks)
    else:
        torch.add(chunks, bias.t().view(1, length, maps, 1), out=out)
    return out.view(batch, length, width)


def _product_time_major(maps: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    """(G, L, L) maps times the (L, G, B, C) columns, written time-major: (L, G, B, C)."""
    out = torch.empty_like(grouped)
    torch.bmm(maps, _as_matrices(grouped), out=_as_matrices(out))
    return out


def _ungroup_ordered(grouped: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(L, G, B, C) -> (B, L, H) in the input's column order: out[b, t, h] = grouped[t, g, b, c]
    for g C + c = inverse[b, h], a selection of columns from each time step's G B C values,
    sequence by sequence (twice as fast as one gather over the batch)."""
    length, maps, batch, columns = grouped.shape
    # Where column h of sequence b lies among a time step's (g, b, c) values.
    place = (inverse // columns) * (batch * columns) + inverse % columns
    place = place + torch.arange(batch, device=inverse.device)[:, None] * columns  # (B, H)
    source = grouped.view(length, maps * batch * columns)
    out = grouped.new_empty(batch, length, maps * columns)
    for sequence in range(batch):
        torch.index_select(source, 1, place[sequence], out=out[sequence])
    return out
