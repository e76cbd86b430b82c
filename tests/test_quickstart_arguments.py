"""examples/quickstart_cpu.sh is configured by its environment: an argument, which it would
otherwise ignore (training with the defaults the user meant to change), is refused."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_an_argument_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run(["bash", str(REPO / "examples/quickstart_cpu.sh"), "--max-update", "5"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "quickstart_cpu.sh takes no arguments (got: --max-update 5)" in result.stderr
    assert "MAX_UPDATE=200 bash" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no corpus prepared, no checkpoint directory
