"""A trained checkpoint of any arch of the project, with the dictionary and the sentencepiece
model of the data it was trained on. (fairseq knows the project's models and tasks: importing
this module imports the fairseq_smlp package, which registers them.)"""

import re
from pathlib import Path
from typing import Optional, Tuple

from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.models import FairseqLanguageModel
from fairseq.tasks import FairseqTask

from ..checkpoint.dictionary import DICTIONARY_KEY
from ..checkpoint.layout import CONSOLIDATE, RANK_SUFFIX, check_loadable

RANK_FILE = re.compile(rf"^(?P<stem>.*){RANK_SUFFIX}\d+\.pt$")


def check_single_file(path: Path) -> None:
    """Expert-parallel runs write one file per rank; one process needs them merged."""
    rank_file = RANK_FILE.match(path.name)
    if rank_file:
        merged = path.with_name(f"{rank_file['stem']}.pt")
        raise ValueError(f"--path {path} is one rank's share of an expert-parallel checkpoint: "
                         f"merge the rank files with `{CONSOLIDATE} {merged}` and give --path "
                         f"{merged}")
    check_loadable(path)


def load_checkpoint(path: Path, data_dir: Optional[Path] = None
                    ) -> Tuple[FairseqLanguageModel, FairseqTask, Path]:
    """(model, its task, data directory): the data directory is ``data_dir``, else the one the
    checkpoint was trained on, and must hold the dict.txt the model was trained with (fairseq's
    model loading checks it: trainer/model_loading.py)."""
    check_single_file(path)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    data_dir = data_dir or trained_on(state)
    if not (data_dir / "dict.txt").is_file():
        raise FileNotFoundError(f"no dict.txt in {data_dir}, the binarized data directory of "
                                f"the checkpoint: give the one it was trained on with --data-dir")
    overwrite_args_by_name(state["cfg"], {"data": str(data_dir)})
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    return models[0], task, data_dir


def trained_on(state: dict) -> Path:
    """The data directory a checkpoint was trained on: the absolute path of its dictionary's
    fingerprint; a checkpoint written before it stored fairseq's --data as given, relative to
    where training ran."""
    saved = state.get(DICTIONARY_KEY)
    return Path(saved["data"] if saved and saved.get("data") else state["cfg"].task.data)


def default_spm_model(data_dir: Path) -> Path:
    """Where examples/prepare_data.sh puts the sentencepiece model: DEST/spm.model next to the
    binarized DEST/bin."""
    return data_dir.parent / "spm.model"
