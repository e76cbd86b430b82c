"""Checkpoints of models whose experts are spread over ranks.

Every rank writes its own file, ``<name>-rank-R.pt`` (fairseq's own rule for its BASE layers,
extended to any model holding expert-parallel parameters): rank 0's holds the shared weights and
its experts, every other rank's only its experts, with an entry saying which experts those are.
Every rank reads its own file back, and rank 0 hands the shared weights to the others. Optimizer
state stays whole in every file, since fairseq restores it per rank.

A single process holds all experts; ``python -m fairseq_smlp.consolidate_checkpoint`` merges the
rank files into one checkpoint for it (fairseq-eval-lm), which also fine-tunes on any number of
ranks (``--finetune-from-model``): each rank then keeps its rows of every expert parameter.
"""

import torch.distributed as dist
from fairseq.trainer import Trainer
from omegaconf import open_dict
from torch import nn

# The entry of a rank's model state that lists its experts: {"rank", "world_size", "experts":
# {parameter name: (group rank, group size)}}.
SHARDS_KEY = "_expert_shards"
CONSOLIDATE = "python -m fairseq_smlp.consolidate_checkpoint"


def parallel_experts(model: nn.Module):
    return {name: p for name, p in model.named_parameters() if hasattr(p, "expert_placement")}


class ExpertCheckpointMixin:
    """For a FairseqModel: state dicts that hold this rank's share of the weights."""

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        experts = parallel_experts(self)
        if not experts:
            return state
        prefix = kwargs.get("prefix", "")
        if dist.get_rank() != 0:
            for key in list(state):
                if key[len(prefix):] not in experts:
                    del state[key]
        state[prefix + SHARDS_KEY] = {
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "experts": {
                name: (p.expert_placement.group_rank, p.expert_placement.group_size)
                for name, p in experts.items()
            },
        }
        return state

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        shards = state_dict.pop(SHARDS_KEY, None)
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


def trainer_holds_parallel_experts(trainer) -> bool:
    return bool(parallel_experts(trainer.get_model()))


_fairseq = {
    "should_save": Trainer.should_save_checkpoint_on_current_rank,
    "suffix": Trainer.checkpoint_suffix,
    "load": Trainer.load_checkpoint,
}


def _should_save(trainer) -> bool:
    return trainer_holds_parallel_experts(trainer) or _fairseq["should_save"].fget(trainer)


def _suffix(trainer) -> str:
    suffix = _fairseq["suffix"].fget(trainer)
    if trainer_holds_parallel_experts(trainer):
        suffix += f"-rank-{trainer.data_parallel_rank}"
    return suffix


def _load_checkpoint(trainer, *args, **kwargs):
    if trainer_holds_parallel_experts(trainer):
        with open_dict(trainer.cfg.checkpoint):
            trainer.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True
    return _fairseq["load"](trainer, *args, **kwargs)


def install_per_rank_checkpoints() -> None:
    """Teach fairseq's Trainer the rule above; models without parallel experts keep fairseq's."""
    Trainer.should_save_checkpoint_on_current_rank = property(_should_save)
    Trainer.checkpoint_suffix = property(_suffix)
    Trainer.load_checkpoint = _load_checkpoint
