"""Merge the rank files of an expert-parallel run (``-rank-R``) or of a --ddp-backend
fully_sharded --use-sharded-state run (``-shardR``) into one checkpoint holding every expert, for
a single process or to fine-tune on another number of ranks; ``python -m
fairseq_smlp.consolidate_checkpoint`` is its command line.

A ``-shardR`` file holds, per FSDP instance (fairseq's ``fsdp_metadata`` describes them), its
padded slice of each instance's parameters. The data-parallel instances split their flat
parameter over all W ranks in rank order. An expert instance splits each expert parameter over
its replica group only (ranks g, g + G, g + 2G, ... for group rank g; a single rank when E >= W),
and group ranks 0..G-1 hold consecutive experts. fairscale's own ``consolidate_shard_weights``
treats every instance as split over all ranks, which would mix different ranks' experts.
"""

import re
from pathlib import Path
from typing import Dict, List

import torch
from fairseq import checkpoint_utils

from .layout import MERGED_KEY, RANK_SUFFIX, SHARD_SUFFIX, SHARDS_KEY, shards_of

# What a -shardR file holds for resuming on the same ranks only: FSDP's layout, the experts' ranks,
# the rank's optimizer shard.
PER_RANK_ENTRIES = ["fsdp_metadata", SHARDS_KEY, "last_optimizer_state"]


def rank_files(path: Path, marker: str = RANK_SUFFIX) -> List[Path]:
    pattern = re.compile(re.escape(path.stem + marker) + r"(\d+)\.pt$")
    found = {int(m.group(1)): p for p in path.parent.glob(f"{path.stem}{marker}*.pt")
             if (m := pattern.match(p.name))}
    if not found:
        raise FileNotFoundError(
            f"no rank files {path.stem}{marker}<R>.pt next to {path}: give the checkpoint's name "
            f"without the {marker}<R> suffix"
        )
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise FileNotFoundError(f"rank files of {path} are missing for ranks {missing}")
    return [found[rank] for rank in sorted(found)]


def merge_model_states(states: List[Dict]) -> Dict:
    """Rank 0's shared weights with each expert parameter's rows from its group ranks 0..G-1,
    in order."""
    shards = [state.pop(SHARDS_KEY) for state in states]
    world_size = shards[0]["world_size"]
    if len(states) != world_size:
        raise ValueError(f"found {len(states)} rank files of a {world_size}-rank run")
    merged = dict(states[0])
    for name, (_, group_size) in shards[0]["experts"].items():
        by_group_rank = {}
        for state, shard in zip(states, shards):
            by_group_rank.setdefault(shard["experts"][name][0], state[name])
        merged[name] = torch.cat([by_group_rank[g] for g in range(group_size)], dim=0)
    return merged


def updates(checkpoints: List[Dict]) -> List[int]:
    """The update each checkpoint was saved at (fairseq's optimizer history)."""
    return [c["optimizer_history"][-1]["num_updates"] for c in checkpoints]


def run_of(checkpoint: Dict):
    """The training run's id a rank file carries (None for files written before ids)."""
    return (shards_of(checkpoint) or {}).get("run")


def check_one_run_one_update(files: List[Path], checkpoints: List[Dict]) -> None:
    runs = [run_of(c) for c in checkpoints]
    if len(set(runs)) > 1:
        listed = ", ".join(f"{f.name} of run {r}" for f, r in zip(files, runs))
        raise ValueError(f"the rank files come from different training runs ({listed}): two "
                         f"runs wrote to this directory; merge the files of one run")
    saved_at = updates(checkpoints)
    if len(set(saved_at)) > 1:
        listed = ", ".join(f"{f.name} at update {n}" for f, n in zip(files, saved_at))
        raise ValueError(
            f"the rank files were saved at different updates ({listed}): a save did not finish "
            f"on every rank. Merge a set all ranks wrote (checkpoint_best, or an epoch's "
            f"checkpoint_E_N), or resume the run so that every rank saves again"
        )


def consolidate(path: Path, output: Path, force: bool = False) -> int:
    """Merge the rank files (or -shardR files) of ``path`` into ``output``; the file count."""
    if output.exists() and not force:
        raise ValueError(f"{output} exists: add --force to overwrite it, or choose --output")
    sharded = any(path.parent.glob(f"{path.stem}{SHARD_SUFFIX}*.pt"))
    if sharded and output == path:
        raise ValueError(
            f"fairseq-eval-lm reads {path.stem}{SHARD_SUFFIX}0.pt in place of "
            f"{path.name}: give the merged file another name with --output"
        )
    files = rank_files(path, SHARD_SUFFIX if sharded else RANK_SUFFIX)
    if output.resolve() in {f.resolve() for f in files}:
        raise ValueError(f"--output {output} is one of the rank files being merged: give the "
                         f"merged file a name of its own")
    # As fairseq wrote them (fairseq's own loader would turn the config into objects that
    # torch.load's default weights_only mode then refuses). This runs code the files hold:
    # merge only checkpoints you trust.
    checkpoints = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    check_one_run_one_update(files, checkpoints)
    if sharded:
        merged = merge_sharded_checkpoints(checkpoints)
    else:
        merged = checkpoints[0]
        merged["model"] = merge_model_states([c["model"] for c in checkpoints])
        merged.pop("last_optimizer_state", None)
    # fairseq-train refuses to resume from the merge: without the optimizer state it would
    # start the update count over.
    merged["extra_state"] = {**(merged.get("extra_state") or {}), MERGED_KEY: len(files)}
    checkpoint_utils.torch_persistent_save(merged, str(output))
    return len(files)


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
