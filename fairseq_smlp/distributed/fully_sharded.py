"""Experts spread over ranks under ``--ddp-backend fully_sharded`` (fairscale's FSDP).

fairseq builds the model inside fairscale's wrapping context and wraps the whole model in one FSDP
instance over the data-parallel group (all W ranks), which flattens and shards every parameter it
finds. Expert parameters must not go there: they differ between ranks. Each module holding a
rank's experts is therefore wrapped first, in an FSDP instance of its own over the placement's
replica group (the W/G ranks that hold the same experts; a single rank when E >= W), and the outer
instance leaves parameters that an inner instance already owns alone. Shared parameters are
sharded over all W ranks as fairseq does.

The expert instances keep their parameters unflattened, so the marked Parameter objects, with
their ``expert``/``expert_placement`` attributes and gradient hook, are the ones autograd
accumulates into. When E >= W an instance's group is its one rank and it communicates nothing.

Gradient scale. FSDP averages a parameter's gradient over its process group: the expert instance
sums the R = W/G replicas' gradients and divides by R. fairseq wants sum(global batch) / W, so the
hook divides by G, with no all-reduce of its own: sum_r (g_r / G) / R = sum_r g_r / W.

Gradient norm. fairseq's Trainer clips with ``utils.clip_grad_norm_`` over the optimizer's
parameters (this rank's FSDP shards) and an aggregate function that all-reduces the squared norm
of the shared shards over the data-parallel group; FSDP's own ``clip_grad_norm_`` is never called
(it would refuse: the instances do not share one group). trainer/grad_norm.py adds the experts,
summed over all ranks. Once FSDP has sharded an expert gradient over its replicas every entry
lives on exactly one rank, so each counts once (``placement.gradient_copies`` is 1).

Checkpoints. Without --use-sharded-state fairseq saves the full state from rank 0 alone and
broadcasts it at load time, which loses every other rank's experts, and its gathering of the full
optimizer state needs one flat parameter per FSDP instance; that combination is refused. With it
every rank saves and loads its own shard (``-shardR`` files), its experts included, and resumes
on the same number of ranks; checkpoint/merge.py merges them for one process.
"""

from fairscale.nn.data_parallel.fully_sharded_data_parallel import ProcessGroupName
from fairscale.nn.wrap.auto_wrap import ConfigAutoWrap
from fairseq.distributed import fsdp_wrap
from torch import nn


def building_fully_sharded() -> bool:
    """Whether the model is being built for --ddp-backend fully_sharded: fairseq-train builds it
    inside fairscale's wrapping context (fsdp_enable_wrap)."""
    return ConfigAutoWrap.in_autowrap_context


def saving_sharded_state() -> bool:
    """Whether fully_sharded saves every rank's own shard (--use-sharded-state)."""
    return ConfigAutoWrap.kwargs.get("use_sharded_state", False)


def wrap_experts(experts: nn.Module, placement) -> nn.Module:
    """``experts`` (a rank's share, already marked by ``placement.shard``) in an FSDP instance over
    the placement's replica group when building for fully_sharded with experts spread; otherwise
    ``experts`` itself."""
    if not placement.fully_sharded:
        return experts
    return fsdp_wrap(
        experts,
        process_group=placement.replica_group,
        process_group_reduce_scatter=ProcessGroupName.default,  # the replica group itself
        flatten_parameters=False,
    )
