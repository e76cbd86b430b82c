"""Merge the ``-shardR`` checkpoints of a --ddp-backend fully_sharded --use-sharded-state run,
experts spread over its ranks or not, into the state of a single process holding every expert.

Every rank's file holds, per FSDP instance (fairseq's ``fsdp_metadata`` describes them), its
padded slice of each instance's parameters. The data-parallel instances split their flat
parameter over all W ranks in rank order. An expert instance splits each expert parameter over
its replica group only (ranks g, g + G, g + 2G, ... for group rank g; a single rank when E >= W),
and group ranks 0..G-1 hold consecutive experts. fairscale's own ``consolidate_shard_weights``
treats every instance as split over all ranks, which would mix different ranks' experts.
"""

from typing import Dict, List

import torch

from .checkpoints import SHARDS_KEY

# What a -shardR file holds for resuming on the same ranks only: FSDP's layout, the experts' ranks,
# the rank's optimizer shard.
PER_RANK_ENTRIES = ["fsdp_metadata", SHARDS_KEY, "last_optimizer_state"]


def merge_sharded_checkpoints(checkpoints: List[Dict]) -> Dict:
    """The -shardR checkpoints of ranks 0..W-1, in order, as one checkpoint that a single
    process loads (fairseq-eval-lm --path)."""
    merged = checkpoints[0]
    merged["model"] = merge_sharded_states(checkpoints)
    for key in PER_RANK_ENTRIES:
        merged.pop(key, None)
    return merged


def merge_sharded_states(checkpoints: List[Dict]) -> Dict[str, torch.Tensor]:
    """The whole model's state from the checkpoints of ranks 0..W-1, in rank order."""
    if "fsdp_metadata" not in checkpoints[0]:
        raise ValueError(
            "not the -shardR checkpoint of a --ddp-backend fully_sharded --use-sharded-state run "
            "(it has no fsdp_metadata)"
        )
    world_size = len(checkpoints)
    layout = checkpoints[0].get(SHARDS_KEY, {"world_size": world_size, "experts": {}})
    if layout["world_size"] != world_size:
        raise ValueError(
            f"found {world_size} shard files of a {layout['world_size']}-rank run")
    metadata = [checkpoint["fsdp_metadata"]["param_metadata"] for checkpoint in checkpoints]
    merged = {}
    for index, instance in enumerate(metadata[0]):
        for stored, parts in instance["params"].items():
            key = joined(instance["fsdp_path"], stored)

            def unpadded(rank: int) -> torch.Tensor:
                padding = metadata[rank][index]["params"][stored]["padding"]
                flat = checkpoints[rank]["model"][key].reshape(-1)
                return flat[: flat.numel() - padding]

            if key in layout["experts"]:
                group_size = layout["experts"][key][1]
                merged[key] = torch.cat([
                    torch.cat([unpadded(r) for r in range(g, world_size, group_size)])
                    .view(parts["shapes"][0])  # (E/G, ...): group rank g's experts
                    for g in range(group_size)
                ])  # (E, ...)
                continue
            flat = torch.cat([unpadded(rank) for rank in range(world_size)])
            for name, values, shape in zip(parts["names"], flat.split(parts["numels"]),
                                           parts["shapes"]):
                merged[joined(instance["fsdp_path"], name)] = values.view(shape)
        for source, tied in instance["shared_param_info"]:
            merged[joined(instance["fsdp_path"], tied)] = merged[
                joined(instance["fsdp_path"], source)]
    saved = checkpoints[0]["model"]
    for name in checkpoints[0]["fsdp_metadata"]["buffer_names"]:
        if name in saved:  # not the non-persistent ones (fairseq's sinusoidal positions)
            merged[name] = saved[name]  # the same on every rank
    return merged


def joined(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
