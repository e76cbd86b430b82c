"""fairseq-train's side of checkpoints whose experts are spread over ranks (the format:
``fairseq_smlp/checkpoint/``): every rank saves and loads its own file, the ranks switch to a new
set of files together, and a resume that would mix files of different runs, updates or rank
counts stops every rank with the same message.

Under --ddp-backend fully_sharded (with --use-sharded-state, fully_sharded.py) fairseq's own rule
already has every rank save and load its own ``-shardR`` file; the plugin then only adds the
entry that says which experts those are, next to the model state.
"""

import errno
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.trainer import Trainer
from omegaconf import open_dict

from ..checkpoint.dictionary import DICTIONARY_KEY, fingerprint
from ..checkpoint.expert_state import parallel_experts, rank_share, shards_entry
from ..checkpoint.layout import (CONSOLIDATE, MERGED_KEY, PENDING, RANK_SUFFIX, SHARDS_KEY,
                                 is_complete, rank_files_of, rank_part, shards_of)

logger = logging.getLogger("fairseq_smlp.trainer.checkpoints")


def trainer_holds_parallel_experts(trainer) -> bool:
    return bool(parallel_experts(trainer.get_model()))


_fairseq = {
    "state_dict": Trainer.state_dict,
    "should_save": Trainer.should_save_checkpoint_on_current_rank,
    "suffix": Trainer.checkpoint_suffix,
    "load": Trainer.load_checkpoint,
    "save": Trainer.save_checkpoint,
    "save_set": checkpoint_utils.save_checkpoint,
    "copy": PathManager.__dict__["copy"],  # a staticmethod
}


def run_id(trainer) -> str:
    """The id every rank's files of this training run carry: rank 0's draw, shared at the first
    save (every rank calls state_dict then), or the one a resumed run loaded."""
    if getattr(trainer, "_expert_run_id", None) is None:
        drawn = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(drawn, src=0)
        trainer._expert_run_id = drawn[0]
    return trainer._expert_run_id


def _state_dict(trainer):
    state = _fairseq["state_dict"](trainer)
    dictionary = getattr(trainer.task, "source_dictionary", None)
    if dictionary is not None:
        state[DICTIONARY_KEY] = fingerprint(dictionary, trainer.cfg.task.get("data"))
    experts = parallel_experts(trainer.get_model())
    if not experts:
        return state
    if not trainer.is_fsdp:
        state["model"] = rank_share(state["model"], experts, run_id(trainer))
    else:  # the model state is this rank's shard already
        state[SHARDS_KEY] = shards_entry(experts, run_id(trainer))
    return state


def _should_save(trainer) -> bool:
    return trainer_holds_parallel_experts(trainer) or _fairseq["should_save"].fget(trainer)


def _suffix(trainer) -> str:
    suffix = _fairseq["suffix"].fget(trainer)
    if trainer_holds_parallel_experts(trainer) and not trainer.is_fsdp:  # FSDP's is -shardR
        suffix += f"{RANK_SUFFIX}{trainer.data_parallel_rank}"
    return suffix


def _save_checkpoint_set(cfg, trainer, epoch_itr, val_loss):
    """A save that runs out of disk (or of the file-size limit) says so in one line: fairseq
    writes each file under a temporary name first (NAME.pt.tmp), so the checkpoints saved before
    are intact; the partial file is removed."""
    started = time.time()
    try:
        return _save_pending_set(cfg, trainer, epoch_itr, val_loss)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        for partial in Path(cfg.save_dir).glob("*.pt*.tmp"):
            if partial.stat().st_mtime >= started - 1:
                partial.unlink()
        raise OSError(error.errno, (
            f"writing a checkpoint to {cfg.save_dir} failed: {error.strerror or error}. The "
            f"checkpoints saved before are intact: free disk space or give another --save-dir, "
            f"and resume")) from error


def _save_pending_set(cfg, trainer, epoch_itr, val_loss):
    """fairseq's checkpoint_utils.save_checkpoint, which writes one file and copies it to the
    save's other names (checkpoint_last among them). With spread experts every one of them is
    written under a pending name, and the ranks switch to the new set together once all have
    written: a save that dies on one rank leaves every rank its previous files."""
    if (not trainer_holds_parallel_experts(trainer) or cfg.write_checkpoints_asynchronously):
        return _fairseq["save_set"](cfg, trainer, epoch_itr, val_loss)
    written = []

    def save_pending(filename, extra_state):
        written.append(filename)
        _fairseq["save"](trainer, f"{filename}{PENDING}", extra_state)
        return os.path.abspath(filename)

    def copy_pending(source, destination, overwrite=False):
        written.append(destination)
        return _fairseq["copy"].__func__(f"{source}{PENDING}", f"{destination}{PENDING}", True)

    trainer.save_checkpoint = save_pending  # for this call only; the class's stays fairseq's
    PathManager.copy = copy_pending
    try:
        saved = _fairseq["save_set"](cfg, trainer, epoch_itr, val_loss)
    finally:
        del trainer.save_checkpoint
        PathManager.copy = _fairseq["copy"]
    dist.barrier()
    for name in written:
        os.replace(f"{name}{PENDING}", name)
    return saved


def _load_checkpoint(trainer, filename, *args, **kwargs):
    filename = str(intact_or_fallback(Path(filename)))
    if not trainer_holds_parallel_experts(trainer):
        check_no_rank_files(Path(filename))
        extra_state = _fairseq["load"](trainer, filename, *args, **kwargs)
        reset_optimizer = args[0] if args else kwargs.get("reset_optimizer", False)
        if not reset_optimizer:
            check_not_resuming_a_merge(filename, extra_state)
        check_not_past_max_update(trainer, filename)
        return extra_state
    check_every_rank_finds_its_file(Path(filename))
    with open_dict(trainer.cfg.checkpoint):
        trainer.cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True
    extra_state = _fairseq["load"](trainer, filename, *args, **kwargs)
    run = getattr(trainer.get_model(), "loaded_run_id", None)
    check_every_rank_resumed_the_same_state(trainer.get_num_updates(), run)
    if run is not None:
        trainer._expert_run_id = run  # the resumed run keeps its id
    check_not_past_max_update(trainer, filename)
    return extra_state


def intact_or_fallback(path: Path) -> Path:
    """``path``, or if it is cut short (a save killed midway) the newest intact checkpoint
    beside it of the same rank, with a warning. torch.save writes a zip archive, whose directory
    comes last: a truncated file has none."""
    if not path.is_file() or is_complete(path):
        return path
    candidates = [p for p in path.parent.glob("checkpoint*.pt")
                  if p != path and rank_part(p.stem) == rank_part(path.stem)
                  and is_complete(p)]
    if not candidates:
        raise ValueError(f"{path} is not a complete checkpoint (a save cut short?) and no intact "
                         f"checkpoint is beside it: remove it to start over")
    fallback = max(candidates, key=lambda p: p.stat().st_mtime)
    logger.warning(f"{path} is not a complete checkpoint (a save cut short?): resuming from "
                   f"{fallback.name}, the newest intact checkpoint beside it")
    return fallback


def check_no_rank_files(path: Path) -> None:
    """A run without spread experts looks for NAME.pt; beside an expert-parallel run's
    NAME-rank-R.pt files fairseq would print "No existing checkpoint found" and start over."""
    found = [] if path.is_file() else rank_files_of(path)
    if not found:
        return
    raise ValueError(
        f"{path} does not exist, but {len(found)} rank files of an expert-parallel run do "
        f"({found[0].name}, ...), which this run (a single process, or a model without experts "
        f"spread over ranks) cannot resume from: resume on {len(found)} ranks, or merge them "
        f"with `{CONSOLIDATE} {path}` and start from the merged file with "
        f"--finetune-from-model"
    )


def check_not_resuming_a_merge(filename: str, extra_state: Optional[dict]) -> None:
    """A merged checkpoint has no optimizer state (it was laid out per rank); fairseq would
    resume from it at update 0 with a fresh optimizer and learning-rate schedule, yet carry on
    from the data position the run had reached."""
    merged = (extra_state or {}).get(MERGED_KEY)
    if merged:
        raise ValueError(
            f"{filename} merges the {merged} rank files of an expert-parallel run and has no "
            f"optimizer state: resuming from it would start the update count, the optimizer and "
            f"the learning-rate schedule over. Resume on {merged} ranks from the rank files, or "
            f"start from the merge with --finetune-from-model {filename} (and another --save-dir)"
        )


def check_every_rank_finds_its_file(path: Path) -> None:
    """Every rank calls this together, before any other exchange of the load. If some ranks
    find their file and others not, the others would start over while the first wait for them
    in the first exchange; if a file is not its rank's share of a run of this many ranks (a
    merged or single-process checkpoint copied over it, another rank's file), its rank would
    skip the exchange of the shared weights that the others enter. Each rank stops with the
    same error instead."""
    found = [None] * dist.get_world_size()
    problem = not_this_ranks_share(path) if path.is_file() else None
    dist.all_gather_object(found, (path.is_file(), problem))
    problems = [f"rank {rank}: {problem}" for rank, (_, problem) in enumerate(found) if problem]
    if problems:
        raise ValueError(
            f"cannot resume {len(found)} ranks from {path.parent}: {'; '.join(problems)}. "
            f"Every rank needs its own -rank-R file of one run: put back a set all ranks wrote "
            f"(e.g. copy checkpoint_best-rank-R.pt over checkpoint_last-rank-R.pt on every "
            f"rank), or start from a merged file with --finetune-from-model (and another "
            f"--save-dir)"
        )
    found = [exists for exists, _ in found]
    if all(found):
        return
    plain = path.with_name(re.sub(rf"{RANK_SUFFIX}\d+$", "", path.stem) + ".pt")
    if not any(found) and plain != path and plain.is_file():
        raise ValueError(
            f"{plain} holds a run without experts spread over ranks and there are no rank files "
            f"beside it: this run of {len(found)} ranks would start over; start from it with "
            f"--finetune-from-model {plain} (and another --save-dir)"
        )
    if any(found):
        missing = [rank for rank, exists in enumerate(found) if not exists]
        raise ValueError(
            f"ranks {missing} of {len(found)} find no checkpoint where the others do "
            f"({path.name}): the files were written by a run of another number of ranks; "
            f"resume on that many, or merge them with `{CONSOLIDATE}` and start from the merged "
            f"file with --finetune-from-model"
        )


def not_this_ranks_share(path: Path) -> Optional[str]:
    """What is wrong with ``path`` as this rank's file of an expert-parallel run of this many
    ranks, or None. A file without a rank suffix (--finetune-from-model) may be any whole
    checkpoint: every rank then takes its rows of each expert."""
    if not rank_part(path.stem):
        return None
    # Only the small entries are read: the tensors stay on disk (mmap).
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    merged = (checkpoint.get("extra_state") or {}).get(MERGED_KEY)
    if merged:
        return (f"{path.name} is the merge of {merged} rank files "
                f"(consolidate_checkpoint), not one rank's share")
    shards = shards_of(checkpoint)
    if shards is None:
        return f"{path.name} holds a whole model, not one rank's share"
    if shards["world_size"] != dist.get_world_size() or shards["rank"] != dist.get_rank():
        return f"{path.name} holds rank {shards['rank']} of a {shards['world_size']}-rank run"
    return None


def check_not_past_max_update(trainer, filename: str) -> None:
    """fairseq-train resumed at or past --max-update would still train one update and overwrite
    the last and best checkpoints."""
    max_update = trainer.cfg.optimization.max_update
    if max_update and trainer.get_num_updates() >= max_update:
        raise ValueError(
            f"{filename} was saved at update {trainer.get_num_updates()} and --max-update is "
            f"{max_update}: the run is over. Raise --max-update to train on, or give another "
            f"--save-dir to train afresh"
        )


def check_every_rank_resumed_the_same_state(num_updates: int, run: Optional[str]) -> None:
    """Every rank calls this together: rank files of different updates are what a save that
    some ranks did not finish leaves, rank files of different runs what two runs sharing a
    --save-dir leave, and the ranks would then train past each other."""
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, (num_updates, run))
    runs = {state[1] for state in states}
    if len(runs) > 1:
        listed = ", ".join(f"rank {rank} of run {r}" for rank, (_, r) in enumerate(states))
        raise ValueError(
            f"the ranks resumed from checkpoints of different training runs ({listed}): two runs "
            f"wrote to this --save-dir; give each run a --save-dir of its own"
        )
    if len({n for n, _ in states}) > 1:
        listed = ", ".join(f"rank {rank} at update {n}" for rank, (n, _) in enumerate(states))
        raise ValueError(
            f"the ranks resumed from checkpoints of different updates ({listed}): a save did "
            f"not finish on every rank. Put back a set all ranks wrote (e.g. copy "
            f"checkpoint_best-rank-R.pt, or an epoch's checkpoint_E_N-rank-R.pt, over "
            f"checkpoint_last-rank-R.pt on every rank) and resume"
        )


def install_per_rank_checkpoints() -> None:
    """Teach fairseq's Trainer the rule above; models without parallel experts keep fairseq's."""
    Trainer.state_dict = _state_dict
    Trainer.should_save_checkpoint_on_current_rank = property(_should_save)
    Trainer.checkpoint_suffix = property(_suffix)
    Trainer.load_checkpoint = _load_checkpoint
    # Inside, fairseq keeps its best loss on the function it calls by this name: the wrapper.
    checkpoint_utils.save_checkpoint = _save_checkpoint_set
