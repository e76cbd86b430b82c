"""examples/train_cpu_ranks.sh's own checks of N and DATA_DIR, made before torchrun starts any
rank (the script stops before running anything else)."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORES = os.cpu_count()


def launch(*argv):
    return subprocess.run(["bash", "examples/train_cpu_ranks.sh", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True)


@pytest.mark.parametrize("argv,message", [
    ([], "(N: the number of CPU ranks, 1 or more; got '')"),
    (["0", "data"], "(N: the number of CPU ranks, 1 or more; got '0')"),
    (["two", "data"], "(N: the number of CPU ranks, 1 or more; got 'two')"),
    # Before: torchrun started to spawn that many fairseq-train processes.
    (["99999999999", "data"], f"N is 99999999999 ranks, more than 4 per CPU core (this machine "
     f"has {CORES}: at most {4 * CORES}); each rank is a fairseq-train process of its own"),
    ([4 * CORES + 1, "data"], f"N is {4 * CORES + 1} ranks, more than 4 per CPU core"),
    # Before: 'got 2', as if N were wrong.
    (["2"], "(DATA_DIR: the directory fairseq-preprocess wrote, e.g. data/sotu/bin)"),
    # Before: every rank's traceback, then torchrun's ChildFailedError.
    (["2", "{d}/missing"], "DATA_DIR {d}/missing holds no dict.txt; give the directory "
     "fairseq-preprocess wrote (e.g. data/sotu/bin)"),
    (["2", "{d}/notes.txt"], "DATA_DIR {d}/notes.txt holds no dict.txt"),
])
def test_bad_arguments_stop_the_script_before_any_rank_starts(tmp_path, argv, message):
    (tmp_path / "notes.txt").write_text("not data\n")
    result = launch(*[str(arg).format(d=tmp_path) for arg in argv])
    assert result.returncode == 2
    assert message.format(d=tmp_path) in result.stderr
    assert "torch" not in result.stderr
