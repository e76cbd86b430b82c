"""A trained checkpoint of any arch of the project, with the dictionary and the sentencepiece
model of the data it was trained on. (fairseq knows the project's models and tasks: importing
this module imports the fairseq_smlp package, which registers them.)"""

import re
from pathlib import Path
from typing import Optional, Tuple

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.models import FairseqLanguageModel
from fairseq.tasks import FairseqTask

from ..checkpoint.layout import CONSOLIDATE, RANK_SUFFIX

RANK_FILE = re.compile(rf"^(?P<stem>.*){RANK_SUFFIX}\d+\.pt$")


def check_single_file(path: Path) -> None:
    """Expert-parallel runs write one file per rank; one process needs them merged."""
    rank_file = RANK_FILE.match(path.name)
    if rank_file:
        merged = path.with_name(f"{rank_file['stem']}.pt")
        raise ValueError(f"--path {path} is one rank's share of an expert-parallel checkpoint: "
                         f"merge the rank files with `{CONSOLIDATE} {merged}` and give --path "
                         f"{merged}")
    if not path.is_file():
        if any(path.parent.glob(f"{path.stem}{RANK_SUFFIX}*.pt")):
            raise FileNotFoundError(f"--path {path} does not exist, but its rank files do: merge "
                                    f"them with `{CONSOLIDATE} {path}`")
        raise FileNotFoundError(f"--path {path} does not exist")


def load_checkpoint(path: Path, data_dir: Optional[Path] = None
                    ) -> Tuple[FairseqLanguageModel, FairseqTask, Path]:
    """(model, its task, data directory): the data directory is ``data_dir``, else the one
    saved in the checkpoint, and must hold the dict.txt the model was trained with."""
    check_single_file(path)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    data_dir = data_dir or Path(state["cfg"].task.data)
    if not (data_dir / "dict.txt").is_file():
        raise FileNotFoundError(f"no dict.txt in {data_dir}, the binarized data directory of "
                                f"the checkpoint: give the one it was trained on with --data-dir")
    check_dictionary_size(state, data_dir / "dict.txt")
    overwrite_args_by_name(state["cfg"], {"data": str(data_dir)})
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    return models[0], task, data_dir


def check_dictionary_size(state, dict_file: Path) -> None:
    """The token embedding has a row per entry of the dictionary the model was trained with."""
    embedding = state["model"].get("decoder.embed_tokens.weight")
    entries = len(Dictionary.load(str(dict_file)))
    if embedding is not None and embedding.size(0) != entries:
        raise ValueError(
            f"{dict_file} has {entries} entries but the checkpoint was trained with a dictionary "
            f"of {embedding.size(0)}: give the binarized data directory it was trained on with "
            f"--data-dir"
        )


def default_spm_model(data_dir: Path) -> Path:
    """Where examples/prepare_data.sh puts the sentencepiece model: DEST/spm.model next to the
    binarized DEST/bin."""
    return data_dir.parent / "spm.model"
