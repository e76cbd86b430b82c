"""fairseq's ``--bf16`` as bf16 training on the device at hand, GPU or CPU.

fairseq 0.12's option parsing makes ``--bf16`` imply ``--tpu`` (options.py), and its config
copies that into every section that has a ``tpu`` field (common, distributed_training,
optimizer, task, model), so that on a GPU or a CPU fairseq-train looks for a TPU (``--cpu
--bf16`` dies in ``get_tpu_device``) and would skip its distributed launch. Before a fairseq
command starts its work (``distributed_utils.call_main``, which fairseq-train and fairseq-eval-lm
go through), a ``--bf16`` given without ``--tpu`` has the implied TPU mode taken back in every
section. fairseq's trainer then does for bf16 what it does for ``--fp16``: casts the model and
the batches' floats, and steps an fp32 copy of the parameters through its FP16Optimizer, without
a loss scale (bf16 has fp32's exponent range). A ``--tpu`` on the command line keeps fairseq's
meaning.
"""

import logging
import sys

from fairseq.distributed import utils as distributed_utils
from omegaconf import DictConfig

logger = logging.getLogger(__name__)

_fairseq_call_main = distributed_utils.call_main


def untie_bf16_from_tpu(cfg, argv) -> bool:
    """Take back the TPU mode that ``--bf16`` implied, unless ``argv`` asks for ``--tpu``;
    whether it did."""
    if not (cfg.common.bf16 and cfg.common.tpu) or "--tpu" in argv:
        return False
    for section in cfg.values():
        if isinstance(section, DictConfig) and "tpu" in section:
            section.tpu = False
    return True


def call_main_without_implied_tpu(cfg, main, **kwargs):
    if untie_bf16_from_tpu(cfg, sys.argv[1:]):
        logger.info("--bf16: the model and its batches in bf16 on the %s, fairseq's fp32 copy "
                    "of the parameters for the updates (--tpu would ask for a TPU)",
                    "CPU" if cfg.common.cpu else "GPU")
    return _fairseq_call_main(cfg, main, **kwargs)


def install_bf16_on_any_device() -> None:
    distributed_utils.call_main = call_main_without_implied_tpu
