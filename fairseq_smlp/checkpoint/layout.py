"""The files of a checkpoint whose experts are spread over ranks, and the keys inside them.

Every rank writes its own file, ``<name>-rank-R.pt`` (fairseq's own rule for its BASE layers,
extended to any model holding expert-parallel parameters): rank 0's holds the shared weights and
its experts, every other rank's only its experts, with the ``SHARDS_KEY`` entry saying which
experts those are. Optimizer state stays whole in every file, since fairseq restores it per rank.
Under --ddp-backend fully_sharded (with --use-sharded-state) fairseq's own rule has every rank
write ``<name>-shardR.pt``: its shard of the shared weights and its experts, with the same entry
beside the model state. A merge of either set into one file (``merge.py``) carries
``MERGED_KEY`` in its extra state.
"""

import re
import zipfile
from pathlib import Path
from typing import List, Optional

# The entry of a rank's model state (of its checkpoint under fully_sharded) that lists its
# experts: {"run": the training run's id, "rank", "world_size",
# "experts": {parameter name: (group rank, group size)}}.
SHARDS_KEY = "_expert_shards"
CONSOLIDATE = "python -m fairseq_smlp.consolidate_checkpoint"
RANK_SUFFIX = "-rank-"  # NAME-rank-R.pt: a rank's file of an expert-parallel run
SHARD_SUFFIX = "-shard"  # NAME-shardR.pt: fairseq's, a rank's file under fully_sharded
PENDING = ".pending"  # a rank's new checkpoint file until every rank has written its own
# In a merged checkpoint's extra_state: the number of rank files merged (consolidate_checkpoint).
MERGED_KEY = "merged_rank_files"
# Module names FSDP puts between a module and its wrapped children (fairscale's
# FullyShardedDataParallel and FlattenParamsWrapper); state dicts leave them out.
FSDP_WRAPPER_NAMES = {"_fsdp_wrapped_module", "_fpw_module"}


def state_key(name: str) -> str:
    """A parameter's name as state dicts spell it, without FSDP's wrapper modules."""
    return ".".join(part for part in name.split(".") if part not in FSDP_WRAPPER_NAMES)


def rank_part(stem: str) -> str:
    """"-rank-R" or "-shardR" of a rank's checkpoint name, "" of a whole one."""
    found = re.search(rf"({RANK_SUFFIX}\d+|{SHARD_SUFFIX}\d+)$", stem)
    return found.group(1) if found else ""


def rank_files_of(path: Path) -> List[Path]:
    return sorted(path.parent.glob(f"{path.stem}{RANK_SUFFIX}*.pt"))


def shards_of(checkpoint: dict) -> Optional[dict]:
    """The SHARDS_KEY entry of a rank file (beside the model state under fully_sharded, inside
    it otherwise); None for a whole checkpoint."""
    return checkpoint.get(SHARDS_KEY) or (checkpoint.get("model") or {}).get(SHARDS_KEY)


def is_complete(path: Path) -> bool:
    """torch.save writes a zip archive, whose directory comes last: a file cut short (a save
    killed midway, a partial copy) has none."""
    return zipfile.is_zipfile(path)


def check_loadable(path: Path) -> None:
    """Stop with one line where ``path``, a checkpoint for one process, cannot be loaded: it
    is missing (and only a spread run's rank files are there), or cut short."""
    if not path.exists():
        found = sorted(path.parent.glob(f"{path.stem}{RANK_SUFFIX}*.pt"))
        if found:
            raise FileNotFoundError(
                f"{path} does not exist, but {len(found)} rank files of an expert-parallel run "
                f"do ({found[0].name}, ...): merge them into it with `{CONSOLIDATE} {path}`")
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not is_complete(path):
        raise ValueError(f"{path} is not a complete checkpoint (a save or copy cut short?): "
                         f"give another one, e.g. checkpoint_best.pt or an epoch's checkpoint")
