import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads it when it is first imported: Triton kernels then run in its interpreter, on
    # CPU tensors (tests/modules/test_balanced_assignment_kernel.py).
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
# Make tests/helpers.py importable as `helpers` from any test directory.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A binarized slice of the bundled corpus: 12 documents, a 300-piece vocabulary."""
    dest = tmp_path_factory.mktemp("sotu")
    subprocess.run(
        ["bash", "examples/prepare_data.sh", "--dest", str(dest), "--vocab-size", "300",
         "--max-documents", "12"],
        cwd=REPO, check=True, capture_output=True,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )
    return dest / "bin"
