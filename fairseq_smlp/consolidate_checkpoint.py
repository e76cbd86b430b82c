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
import sys
from pathlib import Path
from typing import Optional

from .checkpoint.layout import RANK_SUFFIX, SHARD_SUFFIX, is_complete, rank_part
from .checkpoint.merge import consolidate, rank_files


def argument_error(checkpoint: Path, output: Path) -> Optional[str]:
    """What is wrong with the names given, before any file is read."""
    if checkpoint.is_dir():
        return (f"{checkpoint} is a directory; give the checkpoint's name in it without "
                f"{RANK_SUFFIX}<R>, e.g. {checkpoint / 'checkpoint_best.pt'}")
    part = rank_part(checkpoint.stem)
    if part:
        whole = checkpoint.with_name(f"{checkpoint.stem[:-len(part)]}{checkpoint.suffix}")
        return (f"{checkpoint} is one rank's file; give the checkpoint's name without {part}: "
                f"{whole}")
    if output.is_dir():
        return (f"--output {output} is a directory; give the merged file's name, e.g. "
                f"{output / checkpoint.name}")
    if not output.parent.is_dir():
        return f"--output {output}: there is no directory {output.parent} to write it in"
    return None


def check_rank_files(checkpoint: Path) -> None:
    """The rank files are there and each was written in full, before --force is considered."""
    sharded = any(checkpoint.parent.glob(f"{checkpoint.stem}{SHARD_SUFFIX}*.pt"))
    for path in rank_files(checkpoint, SHARD_SUFFIX if sharded else RANK_SUFFIX):
        if not is_complete(path):
            raise ValueError(f"{path} is not a complete checkpoint (a save or copy cut short?): "
                             f"merge a set that every rank wrote in full, e.g. checkpoint_best "
                             f"or checkpoint_last")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path,
                        help="the checkpoint's name without -rank-<R>, e.g. .../checkpoint_best.pt")
    parser.add_argument("--output", type=Path, help="where to write (default: CHECKPOINT)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args(argv)
    error = argument_error(args.checkpoint, args.output or args.checkpoint)
    if error:
        sys.exit(f"consolidate_checkpoint: {error}")
    try:
        check_rank_files(args.checkpoint)
        count = consolidate(args.checkpoint, args.output or args.checkpoint, args.force)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"consolidate_checkpoint: {error}")
    print(f"merged {count} rank files into {args.output or args.checkpoint}")


if __name__ == "__main__":
    main()
