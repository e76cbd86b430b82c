"""E feed-forward experts evaluated as one batched matrix product over a padded (E, C, D) buffer,
or as one grouped matrix product over packed groups of any size where torch has a fast one."""

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cuda_path import takes_cuda_path


class BatchedFeedForwardExperts(nn.Module):
    """E independent FFNs ``W2 act(W1 x + b1) + b2`` applied to an (E, C, D) buffer, expert e to
    row e. Every parameter is stacked along a leading expert dimension, so that an expert
    placement can keep a rank's share of them."""

    def __init__(
        self, num_experts: int, embed_dim: int, ffn_dim: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
    ):
        super().__init__()
        self.activation = activation
        # For the description only: FSDP may hold the parameters as flat shards.
        self.shape = (num_experts, embed_dim, ffn_dim)
        # nn.Linear's default initialisation, per expert.
        bound_in, bound_out = 1 / math.sqrt(embed_dim), 1 / math.sqrt(ffn_dim)
        self.fc1_weight = nn.Parameter(
            torch.empty(num_experts, embed_dim, ffn_dim).uniform_(-bound_in, bound_in)
        )
        self.fc1_bias = nn.Parameter(
            torch.empty(num_experts, 1, ffn_dim).uniform_(-bound_in, bound_in))
        self.fc2_weight = nn.Parameter(
            torch.empty(num_experts, ffn_dim, embed_dim).uniform_(-bound_out, bound_out)
        )
        self.fc2_bias = nn.Parameter(
            torch.empty(num_experts, 1, embed_dim).uniform_(-bound_out, bound_out))
        # Row e: the one-hot of expert e; row E, zeros (the rows of dropped choices). Packed rows
        # take their biases as a product with their rows of it.
        self.register_buffer("expert_one_hot", torch.eye(num_experts + 1, num_experts),
                             persistent=False)

    def forward(self, buffer: torch.Tensor, row_expert: Optional[torch.Tensor] = None,
                group_end: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(E, C, D) -> (E, C, D); or, given ``group_end``, packed rows (M, D) -> (M, D), expert
        e applied to rows [group_end[e - 1], group_end[e]), with group_end[-1] = M, and
        ``row_expert`` (M,) the expert of each row (E: a row whose output is not used, which
        takes no bias)."""
        if group_end is not None:
            return self._forward_packed(buffer, row_expert, group_end)
        hidden = self.activation(torch.baddbmm(self.fc1_bias, buffer, self.fc1_weight))  # (E, C, F)
        return torch.baddbmm(self.fc2_bias, hidden, self.fc2_weight)  # (E, C, D)

    def forward_chosen(self, tokens: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """(N, D) tokens, (N,) the expert of each -> (N, D): every token through its own expert,
        whose weights are gathered for it. Reads N experts' weights where the buffer layouts
        run all E: the cheaper way when N <= E, as in decoding one token at a time."""
        def chosen(parameter):  # (E, ...) -> (N, ...)
            return parameter.index_select(0, expert)

        x = tokens.unsqueeze(1)  # (N, 1, D)
        hidden = self.activation(
            torch.baddbmm(chosen(self.fc1_bias), x, chosen(self.fc1_weight)))  # (N, 1, F)
        return torch.baddbmm(chosen(self.fc2_bias), hidden, chosen(self.fc2_weight)).squeeze(1)

    def _forward_packed(self, rows: torch.Tensor, row_expert: torch.Tensor,
                        group_end: torch.Tensor) -> torch.Tensor:
        # Biases enter as (M, E) one-hot @ (E, F): their gradient is then a matrix product too,
        # not M atomic adds into E rows.
        one_hot = self.expert_one_hot.to(rows.dtype).index_select(0, row_expert)  # (M, E)
        hidden = torch.addmm(F.grouped_mm(rows, self.fc1_weight, offs=group_end), one_hot,
                             self.fc1_bias.squeeze(1))  # (M, F)
        return torch.addmm(F.grouped_mm(self.activation(hidden), self.fc2_weight, offs=group_end),
                           one_hot, self.fc2_bias.squeeze(1))  # (M, D)

    def extra_repr(self) -> str:
        e, d, f = self.shape
        return f"num_experts={e}, embed_dim={d}, ffn_dim={f}"


# Where torch's grouped matrix product has a fast kernel that does not wait on the host: CUDA and
# bf16 (in fp16 it reads the group offsets back), rows whose byte strides are multiples of 16.
# CPU tensors take it inside cuda_path.cuda_path_on_cpu().
PACKED_DEVICE_TYPES = ("cuda",)
PACKED_DTYPES = (torch.bfloat16,)


def packed_experts_supported(experts: nn.Module, tokens: torch.Tensor) -> bool:
    """Whether ``experts`` can run on a packed buffer of ``tokens`` through a fast grouped
    matrix product."""
    if not isinstance(experts, BatchedFeedForwardExperts) or not hasattr(F, "grouped_mm"):
        return False
    _, embed_dim, ffn_dim = experts.shape
    aligned = all(width * tokens.element_size() % 16 == 0 for width in (embed_dim, ffn_dim))
    on_device = tokens.device.type in PACKED_DEVICE_TYPES or takes_cuda_path(tokens)
    return (on_device and tokens.dtype in PACKED_DTYPES
            and experts.fc1_weight.dtype == tokens.dtype and aligned)
