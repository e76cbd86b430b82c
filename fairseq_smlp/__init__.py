"""fairseq-smlp: sparse all-MLP language models as a fairseq plugin.

Load with ``fairseq-train --user-dir <path to this package>``; importing the package registers
its models, criterions and tasks with fairseq, and teaches fairseq-train what experts spread over
ranks need (trainer/, a no-op for every model without them).
"""

from . import criterions, models, tasks, trainer  # noqa: F401

trainer.install()
