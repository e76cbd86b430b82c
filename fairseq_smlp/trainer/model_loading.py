"""Checks where fairseq loads a checkpoint to evaluate or generate with it: fairseq-eval-lm,
fairseq-validate, fairseq-generate, fairseq-interactive, the hub interface and the zero-shot CLI
all go through ``checkpoint_utils.load_model_ensemble_and_task``. Before fairseq builds the
model, a missing file beside a spread run's rank files, a file cut short, and a dictionary other
than the one the checkpoint was trained with each stop with one line that says what to do,
instead of a traceback or, for a dictionary of the same size, a wrong result."""

from pathlib import Path

from fairseq import checkpoint_utils, tasks

from ..checkpoint.dictionary import check_dictionary
from ..checkpoint.layout import check_loadable

_fairseq_load = checkpoint_utils.load_model_ensemble_and_task


def _load_model_ensemble_and_task(filenames, arg_overrides=None, task=None, strict=True,
                                  suffix="", num_shards=1, state=None):
    # An ensemble or fairseq's own sharded files (suffix, num_shards, or the NAME-shard0.pt that
    # fairseq reads in place of NAME.pt) go to fairseq unchecked.
    if (len(filenames) == 1 and num_shards == 1 and not suffix and
            checkpoint_utils.get_maybe_sharded_checkpoint_filename(
                filenames[0], suffix, 0, num_shards) == filenames[0]):
        path = Path(filenames[0])
        if state is None:
            check_loadable(path)
            state = checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides)
        cfg = state.get("cfg")
        if cfg is not None:
            if task is None:  # as fairseq sets it up, once, for its own use below
                task = tasks.setup_task(cfg.task, from_checkpoint=True)
            dictionary = getattr(task, "source_dictionary", None)
            if dictionary is not None:
                task_cfg = getattr(task, "cfg", None) or getattr(task, "args", None)
                data = getattr(task_cfg, "data", None)
                check_dictionary(state, dictionary, data, str(path))
    return _fairseq_load(filenames, arg_overrides, task, strict, suffix, num_shards, state)


def install_model_loading_checks() -> None:
    checkpoint_utils.load_model_ensemble_and_task = _load_model_ensemble_and_task
