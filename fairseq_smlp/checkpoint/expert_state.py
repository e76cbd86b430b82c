"""A model's side of a checkpoint whose experts are spread over ranks: what each rank writes of
its state, and how a model loads a rank's share or a merged checkpoint (layout.py names the
files and keys).

A merged checkpoint (``python -m fairseq_smlp.consolidate_checkpoint``) holds every expert; it
loads into a single process, or on any number of ranks (``--finetune-from-model``), each rank
then keeping its rows of every expert parameter.
"""

import torch.distributed as dist
from torch import nn

from .layout import CONSOLIDATE, SHARDS_KEY, state_key


def parallel_experts(model: nn.Module):
    return {state_key(name): p for name, p in model.named_parameters()
            if hasattr(p, "expert_placement")}


def shards_entry(experts, run: str) -> dict:
    """The SHARDS_KEY entry for this rank's ``experts`` (name -> parameter) of training run
    ``run``."""
    return {
        "run": run,
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "experts": {
            name: (p.expert_placement.group_rank, p.expert_placement.group_size)
            for name, p in experts.items()
        },
    }


def rank_share(model_state, experts, run: str):
    """What this rank writes of a model's full state, given its ``parallel_experts``: on rank 0
    everything, elsewhere only its experts; with the entry that says which experts they are."""
    share = model_state if dist.get_rank() == 0 else {
        key: value for key, value in model_state.items() if key in experts}
    share[SHARDS_KEY] = shards_entry(experts, run)
    return share


class ExpertCheckpointMixin:
    """For a FairseqModel: loads a rank's share of a checkpoint, or a merged one."""

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        shards = state_dict.pop(SHARDS_KEY, None)
        # For the check that every rank resumed from the same run (older files carry none).
        self.loaded_run_id = None if shards is None else shards.get("run")
        experts = parallel_experts(self)
        world_size = dist.get_world_size() if experts else 1
        if shards is not None and shards["world_size"] != world_size:
            raise ValueError(
                f"this checkpoint holds the experts of rank {shards['rank']} of a "
                f"{shards['world_size']}-rank run and cannot be loaded by "
                f"{'a single process' if world_size == 1 else f'{world_size} ranks'}: merge "
                f"the rank files with '{CONSOLIDATE} <checkpoint>' and load the merged file "
                f"(--finetune-from-model on several ranks)"
            )
        if shards is not None:
            for name, parameter in experts.items():
                saved_group_rank = shards["experts"][name][0]
                if saved_group_rank != parameter.expert_placement.group_rank:
                    raise ValueError(
                        f"this checkpoint holds the experts of rank {shards['rank']}, not those "
                        f"of rank {dist.get_rank()} ('{name}'): every rank must read its own "
                        f"-rank-R file, or all ranks a merged one ('{CONSOLIDATE}')"
                    )
            state_dict = take_shared_from_rank_zero(state_dict, experts)
        for name, parameter in experts.items():
            placement = parameter.expert_placement
            saved = state_dict.get(name)
            if saved is not None and saved.size(0) == placement.num_experts != parameter.size(0):
                state_dict[name] = saved[placement.local_slice]  # a merged checkpoint
        return super().load_state_dict(state_dict, strict, model_cfg, args)


def take_shared_from_rank_zero(state_dict, experts):
    """Every rank calls this together: rank 0 sends its shared entries to the others."""
    shared = [{k: v for k, v in state_dict.items() if k not in experts}] if (
        dist.get_rank() == 0) else [None]
    dist.broadcast_object_list(shared, src=0)
    return {**shared[0], **state_dict}
