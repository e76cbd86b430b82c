"""Checks where fairseq's language-modelling tasks (and partial_prediction_lm, built on them)
load a split of binarized data: a split that is not there is named with the ones that are, and
a ``.bin`` file shorter than its index describes (a copy cut short) stops with one line before
fairseq reads past its end."""

import os
from pathlib import Path

import numpy as np
from fairseq import utils
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.tasks.language_modeling import LanguageModelingTask

_fairseq_load_dataset = LanguageModelingTask.load_dataset


def _load_dataset(task, split: str, epoch=1, combine=False, **kwargs):
    paths = utils.split_paths(task.args.data)
    data_dir = Path(paths[(epoch - 1) % len(paths)])
    check_not_cut_short(data_dir / split)
    try:
        return _fairseq_load_dataset(task, split, epoch=epoch, combine=combine, **kwargs)
    except FileNotFoundError as error:
        if not str(error).startswith("Dataset not found"):
            raise
        splits = sorted(p.stem for p in data_dir.glob("*.idx") if p.with_suffix(".bin").exists())
        raise FileNotFoundError(
            f"no split '{split}' in {data_dir} (no {split}.idx and {split}.bin): it holds "
            f"{', '.join(splits) or 'no binarized split'}; choose one of those (--gen-subset, "
            f"--valid-subset) or binarize the split with fairseq-preprocess"
        ) from None


def check_not_cut_short(prefix: Path) -> None:
    """``prefix``.bin must hold every token its index ``prefix``.idx points to."""
    index_file, data_file = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    if not (index_file.is_file() and data_file.is_file()
            and MMapIndexedDataset.exists(str(prefix))):
        return
    try:
        index = MMapIndexedDataset.Index(str(index_file))
    except (AssertionError, ValueError):  # not fairseq's mmap format: fairseq says so itself
        return
    if len(index) == 0:
        return
    needed = int(index._pointers[-1]) + int(index._sizes[-1]) * np.dtype(index.dtype).itemsize
    held = os.path.getsize(data_file)
    if held < needed:
        raise ValueError(
            f"{data_file} holds {held} bytes where its index {index_file.name} describes "
            f"{needed}: the binarized data was cut short (an interrupted copy or "
            f"fairseq-preprocess?); binarize it again (examples/prepare_data.sh or "
            f"fairseq-preprocess)"
        )


def install_dataset_checks() -> None:
    LanguageModelingTask.load_dataset = _load_dataset
