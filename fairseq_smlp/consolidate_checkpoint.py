"""Merge the per-rank files of an expert-parallel run into one checkpoint with every expert, for a
single process (fairseq-eval-lm) or to fine-tune on another number of ranks.

    python -m fairseq_smlp.consolidate_checkpoint checkpoints/run/checkpoint_best.pt

reads checkpoints/run/checkpoint_best-rank-*.pt and writes checkpoints/run/checkpoint_best.pt
(or --output; an existing file only with --force). Rank files of different training runs, or
of different updates (the trace of a save that some ranks did not finish), are refused. A
--ddp-backend fully_sharded run writes checkpoint_best-shard*.pt instead; their merge needs an
--output of another name, since fairseq-eval-lm reads NAME-shard0.pt in place of NAME.pt when
both exist. The optimizer state is left out: it was laid out per rank, so fairseq-train refuses
to resume from the merge and starts from it with --finetune-from-model.
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List

import torch
from fairseq import checkpoint_utils

from .trainer.checkpoints import MERGED_KEY, RANK_SUFFIX, SHARD_SUFFIX, SHARDS_KEY
from .trainer.fully_sharded_checkpoints import merge_sharded_checkpoints


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
    shards = checkpoint.get(SHARDS_KEY) or checkpoint["model"].get(SHARDS_KEY) or {}
    return shards.get("run")


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
    # fairseq-train refuses to resume from the merge (trainer/checkpoints.py): without the
    # optimizer state it would start the update count over.
    merged["extra_state"] = {**(merged.get("extra_state") or {}), MERGED_KEY: len(files)}
    checkpoint_utils.torch_persistent_save(merged, str(output))
    return len(files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path,
                        help="the checkpoint's name without -rank-<R>, e.g. .../checkpoint_best.pt")
    parser.add_argument("--output", type=Path, help="where to write (default: CHECKPOINT)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args(argv)
    try:
        count = consolidate(args.checkpoint, args.output or args.checkpoint, args.force)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"consolidate_checkpoint: {error}")
    print(f"merged {count} rank files into {args.output or args.checkpoint}")


if __name__ == "__main__":
    main()
