"""examples/compare_cpu.sh end to end on a slice of the bundled corpus with a budget of a fraction
of a second per system: every system trains under fairseq-train until the budget stops it, is
validated, and lands in the report with the FLOPs of its system.json."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fairseq import tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_smlp.comparison.flops import parse_training_args
from fairseq_smlp.comparison.systems import SYSTEMS, system

REPO = Path(__file__).resolve().parents[2]
BUDGET_MINUTES = 0.01


def compare(*args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", "examples/compare_cpu.sh", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_every_system_trains_for_the_budget_and_reaches_the_report(data_dir, tmp_path):
    out = tmp_path / "runs"
    result = compare("--minutes", str(BUDGET_MINUTES), "--data", str(data_dir.parent),
                     "--out", str(out), "--", "--batch-size", "4", "--max-valid-steps", "2",
                     "--log-interval", "1", "--no-save")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = results["systems"]
    assert set(rows) == {s.name for s in SYSTEMS}
    for name, row in rows.items():
        log = (out / name / "train.log").read_text()
        # The wall-clock budget is what stopped it, well before an epoch of the slice.
        assert f"'stop_time_hours': {BUDGET_MINUTES / 60}" in log
        assert re.search(r"Stopping training due to cumulative_training_time: [0-9.e-]+ > "
                         r"stop_time_hours", log)
        assert 1 <= row["num_updates"] <= 5, name
        system = json.loads((out / name / "system.json").read_text())
        assert row["train_flops_per_token"] == system["train_flops_per_token"]
        # fairseq's dump of its configuration names the arch it built.
        arch = system["arch"]
        assert row["arch"] == arch and re.search(rf"'_name': '{arch}'|arch='{arch}'", log)
    table = (out / "results.md").read_text()
    # The header and one row per system.
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(SYSTEMS)
    for plot in ("valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_budget_that_is_not_a_positive_number_is_refused(tmp_path):
    for bad in ("0", "-1", "ten"):
        result = compare("--minutes", bad, "--out", str(tmp_path))
        assert result.returncode == 2
        assert f"--minutes must be a positive number of minutes; got '{bad}'" in result.stderr


def test_extra_flags_reach_the_flops_count_and_a_failed_run_is_named(data_dir, tmp_path):
    """--decoder-layers 2 after '--' shrinks the model: system.json counts the parameters of the
    model fairseq builds with it. fairseq-train then fails on an unwritable --save-dir."""
    out = tmp_path / "runs"
    result = compare("--minutes", str(BUDGET_MINUTES), "--data", str(data_dir.parent),
                     "--out", str(out), "--systems", "gmlp", "--", "--decoder-layers", "2",
                     "--save-dir", "/proc/no-such-dir/checkpoints")
    assert result.returncode == 1
    assert "compare_cpu.sh: fairseq-train failed for 'gmlp'; see " in result.stderr

    args = parse_training_args([str(data_dir), *system("gmlp").flags("cpu"),
                                "--decoder-layers", "2"])
    cfg = convert_namespace_to_omegaconf(args)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    built = sum(p.numel() for p in model.parameters())
    assert json.loads((out / "gmlp" / "system.json").read_text())["total_params"] == built
