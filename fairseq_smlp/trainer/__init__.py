"""The plugin's edge with fairseq-train: every change it makes to fairseq's own training code,
on the package's top floor (nothing in the package imports it but its install hook).

Experts spread over ranks (``distributed/expert_placement.py``) need fairseq-train to

- save and load a checkpoint per rank, each with that rank's experts (``checkpoints.py``; the
  format itself is ``fairseq_smlp/checkpoint/``);
- measure the gradient norm over shared and expert parameters alike (``grad_norm.py``);
- keep the experts' marks on the fp32 copies of --fp16 (``mixed_precision.py``).

And fairseq's own datasets need ``numpy.compat`` back under NumPy 2 (``numpy_compat.py``), and
its ``--bf16`` must not mean a TPU (``bf16.py``); third-party warnings a user cannot act on are
filtered (``quiet_log.py``). Where fairseq loads a checkpoint to evaluate it, or a split of
binarized data, a wrong file stops with one line (``model_loading.py``, ``datasets.py``), and
the plugin's own errors print as one line, not a traceback (``one_line_errors.py``).

``install`` makes these changes once, when the package is imported (``--user-dir`` imports it).
Each expert change keys on the ``expert_placement`` mark that a parallel placement puts on its
parameters, so a model without one, a fairseq model or a single process, trains exactly as
fairseq has it.
"""

from .bf16 import install_bf16_on_any_device
from .checkpoints import install_per_rank_checkpoints
from .datasets import install_dataset_checks
from .grad_norm import install_expert_grad_norm
from .mixed_precision import install_expert_fp32_copies
from .model_loading import install_model_loading_checks
from .numpy_compat import install_numpy_compat
from .one_line_errors import install_one_line_errors
from .quiet_log import install_quiet_log


def install() -> None:
    install_per_rank_checkpoints()
    install_expert_grad_norm()
    install_expert_fp32_copies()
    install_numpy_compat()
    install_bf16_on_any_device()
    install_quiet_log()
    install_model_loading_checks()
    install_dataset_checks()
    install_one_line_errors()
