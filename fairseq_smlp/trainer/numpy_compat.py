"""fairseq's datasets for ``--sample-break-mode eos`` (TokenBlockDataset) and for translation
pairs read ``numpy.compat.long``, which NumPy 2 removed; the install brings NumPy 2. Restored here
as NumPy 1 had it (``long`` is Python's ``int``) when it is missing, fairseq's files untouched."""

import types

import numpy as np


def install_numpy_compat() -> None:
    if not hasattr(np, "compat"):
        np.compat = types.SimpleNamespace(long=int)
