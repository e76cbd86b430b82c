"""The fingerprint of the dictionary a checkpoint was trained with, and its check against the
dictionary it meets at load time.

Two dictionaries of the same size load into the same embedding without a word, and a model then
reads every token id as another token: the perplexity and zero-shot accuracy come out wrong. So
every checkpoint carries ``DICTIONARY_KEY``: the size, a hash of the symbols in order, and the
absolute path of the data directory it was trained on; wherever it meets a dictionary the two
are compared. A checkpoint written before the fingerprint loads, with a warning.
"""

import hashlib
import logging
import os
from typing import Optional

from fairseq.data import Dictionary

DICTIONARY_KEY = "dictionary_fingerprint"
logger = logging.getLogger("fairseq_smlp.checkpoint.dictionary")


def fingerprint(dictionary: Dictionary, data: Optional[str]) -> dict:
    """What a checkpoint stores of the dictionary of the task it trained, whose data directory
    (fairseq's ``task.data``, its first directory if several) is ``data``."""
    symbols = "\n".join(dictionary.symbols).encode("utf-8")
    first = str(data).split(os.pathsep)[0] if data else None
    return {"size": len(dictionary), "sha256": hashlib.sha256(symbols).hexdigest(),
            "data": os.path.abspath(first) if first else None}


def check_dictionary(checkpoint: dict, dictionary: Dictionary, data: Optional[str],
                     checkpoint_name: str) -> None:
    """Raise a ValueError if ``dictionary`` (of the data directory ``data``) is not the one the
    ``checkpoint`` (a loaded state, ``checkpoint_name`` its file) was trained with."""
    saved = checkpoint.get(DICTIONARY_KEY)
    if saved is None:
        logger.warning(f"{checkpoint_name} was written without a fingerprint of its dictionary: "
                       f"nothing checks that the dictionary of {data} is the one it was trained "
                       f"with")
        return
    given = fingerprint(dictionary, data)
    if (given["size"], given["sha256"]) == (saved["size"], saved["sha256"]):
        return
    what = ("another size" if given["size"] != saved["size"]
            else "the same size but other tokens or another order")
    raise ValueError(
        f"{checkpoint_name} was trained with the dictionary of {saved['data']} "
        f"({saved['size']} entries); the dictionary of {given['data']} ({given['size']} entries) "
        f"is another one ({what}), so every token id would mean another token: give the "
        f"binarized data directory the checkpoint was trained on"
    )
