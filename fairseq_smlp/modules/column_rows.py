"""Feature columns of (B, L, H) activations moved into per-expert row buffers (E, N, L) and back:
the dispatch and combine of feature routing (sMoE).

Column h of sequence b, a length-L vector over positions, becomes a row of its expert's buffer.
The columns are first laid out as rows ((B, L, H) -> (B H, L), one transposing copy), then
permuted by an index gather; the way back is the inverse gather, whose transposed result the
caller's next elementwise operation reads in place. The gradient of each gather is the inverse
gather, so no atomic scatter-add runs either way.
"""

import torch


class ColumnRoutes:
    """Where each column goes. ``expert``: (B, H) the expert of every column, each expert
    taking H / E columns of every sequence; an expert's rows are in sequence order, then
    column order."""

    def __init__(self, expert: torch.Tensor, num_experts: int):
        batch, width = expert.shape
        self.num_experts = num_experts
        order = expert.argsort(dim=1, stable=True)  # (B, H): expert 0's columns first, ...
        first_row = torch.arange(batch, device=expert.device)[:, None] * width
        # (E, B, H / E) -> (E N,): the row of (B H) that each expert row reads
        source = (order + first_row).view(batch, num_experts, -1).transpose(0, 1).reshape(-1)
        self.source = source
        self.inverse = torch.empty_like(source).scatter_(
            0, source, torch.arange(source.numel(), device=expert.device))  # (B H,)


def columns_to_rows(x: torch.Tensor, routes: ColumnRoutes) -> torch.Tensor:
    """(B, L, H) -> (E, N, L), N = B H / E."""
    batch, length, width = x.shape
    rows = x.transpose(1, 2).reshape(batch * width, length)  # (B H, L)
    grouped = _PermuteRows.apply(rows, routes.source, routes.inverse)
    return grouped.view(routes.num_experts, -1, length)


def rows_to_columns(rows: torch.Tensor, routes: ColumnRoutes, batch: int) -> torch.Tensor:
    """(E, N, L) -> (B, L, H), the inverse of ``columns_to_rows`` (a transposed view)."""
    length = rows.size(2)
    columns = _PermuteRows.apply(rows.reshape(-1, length), routes.inverse, routes.source)
    return columns.view(batch, -1, length).transpose(1, 2)


class _PermuteRows(torch.autograd.Function):
    """rows[index], ``inverse`` being the inverse permutation of ``index``."""

    @staticmethod
    def forward(ctx, rows, index, inverse):
        ctx.save_for_backward(inverse)
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        inverse, = ctx.saved_tensors
        return grad.contiguous().index_select(0, inverse), None, None
