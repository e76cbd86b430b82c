"""fairseq-smlp: sparse all-MLP language models as a fairseq plugin.

Load with ``fairseq-train --user-dir <path to this package>``; importing the package registers
its models, criterions and tasks with fairseq.
"""

from . import criterions, models, tasks  # noqa: F401
