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

from .checkpoint.merge import consolidate


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
