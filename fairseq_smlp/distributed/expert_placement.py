"""Where the experts of an MoE layer live when training runs on several ranks.

With W data-parallel ranks and E experts, the ranks form all-to-all groups of G = min(W, E)
consecutive ranks; rank g of a group holds experts [g E/G, (g + 1) E/G). Tokens (tMoE) or feature
columns (sMoE) travel inside their group to the experts' ranks and back. When W > E the W/G groups
each hold every expert once: the ranks at the same place of each group hold the same experts
(replicas) and sum those experts' gradients.

Expert parameters are marked ``param.expert = True`` as fairseq's own MoE code does: fairseq's
``legacy_ddp`` leaves them out of the data-parallel all-reduce, and the model lists them for
PyTorch DDP to ignore (``pytorch_ddp``). Their gradients are divided by W, since fairseq divides
the gradients of every parameter by the global sample size after scaling them by W (DDP averages
over ranks, an expert's gradient is already the sum over the global batch). Under
``--ddp-backend fully_sharded`` the experts get FSDP instances of their own (fully_sharded.py).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .all_to_all import all_to_all
from .fully_sharded import building_fully_sharded, saving_sharded_state, wrap_experts

# (world size, group size) -> (this rank's all-to-all group, this rank's replica group). Groups
# are made once per shape: torch.distributed needs every rank to create every group, in order.
_GROUPS: Dict[Tuple[int, int], Tuple[object, object]] = {}


@dataclass(frozen=True)
class ExpertPlacement:
    num_experts: int
    group: Optional[object] = None  # the all-to-all group; None: every expert on this rank
    group_size: int = 1
    group_rank: int = 0
    replica_group: Optional[object] = None  # ranks holding the same experts
    num_replicas: int = 1
    fully_sharded: bool = False  # experts in FSDP instances over their replica group

    @property
    def is_parallel(self) -> bool:
        return self.group_size > 1

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.group_size

    @property
    def world_size(self) -> int:
        return self.group_size * self.num_replicas

    @property
    def gradient_copies(self) -> int:
        """Ranks holding each entry of an expert gradient after the backward pass: every replica,
        unless FSDP has sharded the gradient over the replicas."""
        return 1 if self.fully_sharded else self.num_replicas

    @property
    def local_slice(self) -> slice:
        first = self.group_rank * self.local_experts
        return slice(first, first + self.local_experts)

    def place(self, experts: nn.Module) -> nn.Module:
        """``experts``, a module whose every parameter is stacked along a leading expert
        dimension of size E, as this rank holds it: its share of the experts kept and marked,
        in an FSDP instance of its own under --ddp-backend fully_sharded. Every MoE places its
        experts with this one call."""
        return wrap_experts(self.shard(experts), self)

    def shard(self, experts: nn.Module) -> nn.Module:
        """Keep this rank's experts and mark them. Building all E experts first and keeping a
        slice gives every rank the initialisation a single process would give."""
        if not self.is_parallel:
            return experts
        for module in experts.modules():
            for name, parameter in list(module.named_parameters(recurse=False)):
                if parameter.size(0) != self.num_experts:
                    raise ValueError(
                        f"expert parameter '{name}' has {parameter.size(0)} rows, expected one "
                        f"per expert ({self.num_experts})"
                    )
                local = nn.Parameter(parameter.detach()[self.local_slice].clone())
                self.mark(local)
                setattr(module, name, local)
        return experts

    def mark(self, parameter: nn.Parameter) -> None:
        parameter.expert = True
        parameter.expert_placement = self
        parameter.register_hook(self.scale_gradient)

    def __deepcopy__(self, memo):
        return self  # process groups are handles to shared communicators, not state

    def scale_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """To sum(global batch) / W. Under FSDP, which then averages over the replicas, / G."""
        if self.fully_sharded:
            return grad / self.group_size
        if self.num_replicas > 1:
            grad = grad.clone()
            dist.all_reduce(grad, group=self.replica_group)
        return grad / self.world_size


class PlacementError(ValueError):
    """An expert count that cannot be placed over the running job. The message continues the
    name of the flag that set the count, which the model prepends (models/expert_flags.py)."""


def check_spreadable(num_experts: int, world_size: int) -> None:
    if num_experts < 1:
        raise PlacementError(f"must be at least 1; got {num_experts}")
    if num_experts % world_size != 0 and world_size % num_experts != 0:
        valid = sorted({d for d in range(1, world_size + 1) if world_size % d == 0}
                       | {world_size * k for k in (1, 2, 4)})
        raise PlacementError(
            f"{num_experts} cannot be spread over {world_size} ranks: the expert count must be "
            f"a multiple or a divisor of the number of ranks (for {world_size} ranks, e.g. "
            f"{', '.join(map(str, valid))})"
        )


def expert_placement(num_experts: int) -> ExpertPlacement:
    """The placement of an MoE layer's ``num_experts`` experts over the ranks of the running
    job; all experts on this rank when torch.distributed is not initialised (one process,
    fairseq-eval-lm) or has a single rank. Raises PlacementError for a count it cannot place."""
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    check_spreadable(num_experts, world_size)
    if world_size == 1:
        return ExpertPlacement(num_experts)
    group_size = min(world_size, num_experts)
    fully_sharded = group_size > 1 and building_fully_sharded()
    if fully_sharded and not saving_sharded_state():
        raise PlacementError(
            f"{num_experts} spread over {world_size} ranks cannot yet be held by --ddp-backend "
            f"fully_sharded without --use-sharded-state: fairseq would save the whole model "
            f"from rank 0 alone and lose the other ranks' experts; add --use-sharded-state "
            f"(every rank saves and resumes its own shard), or use --ddp-backend legacy_ddp (or "
            f"pytorch_ddp on GPUs)"
        )
    group, replica_group = process_groups(world_size, group_size)
    rank = dist.get_rank()
    return ExpertPlacement(
        num_experts, group=group, group_size=group_size, group_rank=rank % group_size,
        replica_group=replica_group, num_replicas=world_size // group_size,
        fully_sharded=fully_sharded,
    )


def process_groups(world_size: int, group_size: int):
    key = (world_size, group_size)
    if key not in _GROUPS:
        rank = dist.get_rank()
        mine = {}
        for kind, members in group_layout(world_size, group_size):
            group = dist.new_group(members)
            if rank in members:
                mine[kind] = group
        _GROUPS[key] = (mine["all_to_all"], mine["replica"])
    return _GROUPS[key]


def group_layout(world_size: int, group_size: int) -> List[Tuple[str, List[int]]]:
    """All-to-all groups of consecutive ranks, then replica groups of ranks at the same place
    in each: for 4 ranks and 2 experts, [0, 1] and [2, 3], then [0, 2] and [1, 3]."""
    blocks = [("all_to_all", list(range(start, start + group_size)))
              for start in range(0, world_size, group_size)]
    replicas = [("replica", list(range(place, world_size, group_size)))
                for place in range(group_size)]
    return blocks + replicas


def expert_parameter_names(model: nn.Module) -> List[str]:
    return [name for name, parameter in model.named_parameters() if hasattr(parameter, "expert")]


def exclude_experts_from_ddp(model: nn.Module) -> None:
    """PyTorch DDP (fairseq's pytorch_ddp) neither broadcasts nor all-reduces these."""
    model._ddp_params_and_buffers_to_ignore = expert_parameter_names(model)


def group_max(values: List[int], placement: ExpertPlacement, device) -> List[int]:
    """The element-wise largest of ``values`` over the all-to-all group: the ranks exchange
    buffers of one shape, so they agree on the largest of each dimension."""
    if not placement.is_parallel:
        return values
    largest = torch.tensor(values, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=placement.group)
    return largest.tolist()


def run_experts(buffer: torch.Tensor, experts, placement: ExpertPlacement) -> torch.Tensor:
    """Apply E experts to an (E, N, ...) buffer, row e to expert e, where this rank holds the
    experts of ``placement.local_slice``. Every rank of the group passes a buffer of the same
    shape; the rows travel to their experts' ranks and the outputs back by all-to-all.
    ``experts`` maps (E_local, N', ...) to the same shape."""
    if not placement.is_parallel:
        return experts(buffer)
    num_experts, rows, *rest = buffer.shape
    group_size, local = placement.group_size, placement.local_experts
    received = all_to_all(buffer, placement.group)  # (E, N, ...): block g from group rank g
    received = received.view(group_size, local, rows, *rest)  # (G, E/G, N, ...)
    inputs = received.transpose(0, 1).reshape(local, group_size * rows, *rest)  # (E/G, G N, ...)
    outputs = experts(inputs).view(local, group_size, rows, *rest)  # (E/G, G, N, ...)
    outputs = outputs.transpose(0, 1).reshape(num_experts, rows, *rest)  # (E, N, ...)
    return all_to_all(outputs, placement.group)  # back to the rows' ranks
