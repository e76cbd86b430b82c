"""examples/compare_cpu.sh end to end on a slice of the bundled corpus with a budget of a fraction
of a second per system: every system trains under fairseq-train until the budget stops it, is
validated, and lands in the report with the FLOPs of its system.json; and with a budget of
updates, which a run cut off resumes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq import tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_smlp.comparison.flops import parse_training_args
from fairseq_smlp.comparison.systems import SYSTEMS, system

REPO = Path(__file__).resolve().parents[2]
BUDGET_MINUTES = 0.01
# Small batches, a short validation, a log line per update, no checkpoints.
TINY = ("--batch-size", "4", "--max-valid-steps", "2", "--log-interval", "1", "--no-save")


def compare(*args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", "examples/compare_cpu.sh", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_every_system_trains_for_the_budget_and_reaches_the_report(data_dir, tmp_path):
    out = tmp_path / "runs"
    result = compare("--minutes", str(BUDGET_MINUTES), "--seeds", "1", "--data",
                     str(data_dir.parent), "--out", str(out), "--parallel", "2", "--", *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = results["systems"]
    assert set(rows) == {s.name for s in SYSTEMS}
    for name, row in rows.items():
        log = (out / name / "seed1" / "train.log").read_text()
        # The wall-clock budget is what stopped it, well before an epoch of the slice.
        assert f"'stop_time_hours': {BUDGET_MINUTES / 60}" in log
        assert re.search(r"Stopping training due to cumulative_training_time: [0-9.e-]+ > "
                         r"stop_time_hours", log)
        assert row["seeds"] == 1 and 1 <= row["num_updates"]["mean"] <= 5, name
        system = json.loads((out / name / "seed1" / "system.json").read_text())
        assert row["train_flops_per_token"] == system["train_flops_per_token"]
        # fairseq's dump of its configuration names the arch it built.
        arch = system["arch"]
        assert row["arch"] == arch and re.search(rf"'_name': '{arch}'|arch='{arch}'", log)
    table = (out / "results.md").read_text()
    # The header and one row per system.
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(SYSTEMS)
    for plot in ("valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_seeds_give_a_mean_and_spread_and_a_trailing_score_from_eval_lm(data_dir, tmp_path):
    """Two seeds, checkpoints kept: each seed trains with its own --seed and fairseq-eval-lm
    scores its last checkpoint on the trailing 80% of every block. smlp_partial is trained and
    validated on those same positions: the score of its last checkpoint is its last
    validation's, here where that validation reads the whole set too (fairseq's batching of the
    validation set drops its last sentences when --batch-size is below
    --required-batch-size-multiple, 8 by default)."""
    out = tmp_path / "runs"
    result = compare("--minutes", str(BUDGET_MINUTES), "--seeds", "2", "--data",
                     str(data_dir.parent), "--out", str(out), "--systems", "smlp_partial", "--",
                     "--batch-size", "4", "--required-batch-size-multiple", "1",
                     "--log-interval", "1", "--max-valid-steps", "100000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["ranked_on_trailing"]
    for name, row in results["systems"].items():
        assert row["seeds"] == 2 and [run["seed"] for run in row["runs"]] == [1, 2]
        for seed in (1, 2):
            assert f"'seed': {seed}," in (out / name / f"seed{seed}" / "train.log").read_text()
        trailing = row["trailing_ppl"]
        assert trailing["min"] <= trailing["mean"] <= trailing["max"]
        assert len(trailing["values"]) == 2 and trailing["values"][0] != trailing["values"][1]
    partial = results["systems"]["smlp_partial"]
    for run, scored in zip(partial["runs"], partial["trailing_ppl"]["values"]):
        assert scored == pytest.approx(run["final_valid_ppl"], rel=1e-3)
    assert "(" in (out / "results.md").read_text().split("| smlp_partial‡ |")[1].split("\n")[0]
    assert (out / "valid_ppl_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Seed 1's routing picture, linked from the report.
    picture = "smlp_partial/seed1/routing.png"
    assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "smlp_partial" / "seed2" / "routing.png").exists()
    assert results["routing_pictures"] == {"smlp_partial": picture}
    assert f"[smlp_partial]({picture})" in (out / "results.md").read_text()


def test_an_expert_sweep_trains_and_names_each_count(data_dir, tmp_path):
    """One count, to keep it short: the name carries it and fairseq-train builds it."""
    out = tmp_path / "sweep"
    result = compare("--minutes", str(BUDGET_MINUTES), "--seeds", "1", "--data",
                     str(data_dir.parent), "--out", str(out), "--systems", "switch",
                     "--sweep-experts", "2", "--", *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(json.loads((out / "results.json").read_text())["systems"]) == ["switch_e2"]
    log = (out / "switch_e2" / "seed1" / "train.log").read_text()
    assert "'moe_expert_count': 2" in log


def test_bad_options_are_refused_before_anything_trains(tmp_path):
    for bad in ("0", "-1", "ten"):
        result = compare("--minutes", bad, "--out", str(tmp_path))
        assert result.returncode == 2
        assert f"--minutes must be a positive number of minutes; got '{bad}'" in result.stderr
    for option, bad, message in (
        ("--seeds", "0", "--seeds must be a whole number of runs from 1 to 999999999; got '0'"),
        ("--sweep-experts", "4,x", "--sweep-experts takes expert counts, 1 or more, separated"),
        # Past 63 bits bash's arithmetic wraps: a huge --updates took a wrapped one's interval.
        ("--updates", "9" * 20, f"--updates must be a whole number of updates from 1 to "
         f"999999999; got '{'9' * 20}'"),
        ("--parallel", "9" * 20, "--parallel must be a whole number of runs from 1 to"),
        # Before: all systems, as if --systems had not been given.
        ("--systems", "", "--systems needs a value (usage: see the top of"),
    ):
        result = compare(option, bad, "--out", str(tmp_path))
        assert result.returncode == 2 and message in result.stderr
    result = compare("--sweep-experts", "4", "--systems", "gmlp", "--out", str(tmp_path))
    assert result.returncode == 2 and "--experts 4: gmlp has no experts" in result.stderr
    # Before: bash's "$2: unbound variable".
    result = compare("--out", str(tmp_path), "--minutes")
    assert result.returncode == 2 and "compare_cpu.sh: --minutes needs a value" in result.stderr
    (tmp_path / "notes").write_text("kept\n")
    result = compare("--out", str(tmp_path / "notes"))
    assert result.returncode == 2
    assert f"--out {tmp_path / 'notes'} is a file; give a directory" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["notes"]
    assert (tmp_path / "notes").read_text() == "kept\n"


def test_flags_no_model_takes_stop_the_script_before_anything_trains(data_dir, tmp_path):
    """Before, each run of such a system failed in turn, after the systems before it had
    trained: the FLOPs count, which runs the models' checks, now reads every system first."""
    out = tmp_path / "runs"
    result = compare("--updates", "5", "--seeds", "1", "--data", str(data_dir.parent), "--out",
                     str(out), "--systems", "gmlp,smlp_deterministic_e3")
    assert result.returncode == 2
    assert ("--smoe-expert-count 3 must be at least 1 and divide the sMoE width 256"
            in result.stderr)
    assert ("compare_cpu.sh: the flags of 'smlp_deterministic_e3' (above) build no model; "
            "nothing was trained") in result.stderr
    assert not out.exists()


def test_extra_flags_reach_the_flops_count_and_a_failed_run_is_named(data_dir, tmp_path):
    """--decoder-layers 2 after '--' shrinks the model: system.json counts the parameters of the
    model fairseq builds with it. fairseq-train then fails on an unwritable --save-dir."""
    out = tmp_path / "runs"
    result = compare("--minutes", str(BUDGET_MINUTES), "--seeds", "1", "--data",
                     str(data_dir.parent), "--out", str(out), "--systems", "gmlp", "--",
                     "--decoder-layers", "2",
                     "--save-dir", "/proc/no-such-dir/checkpoints")
    assert result.returncode == 1
    assert "compare_cpu.sh: fairseq-train failed for 'gmlp' (seed 1); see " in result.stderr

    args = parse_training_args([str(data_dir), *system("gmlp").flags("cpu"),
                                "--decoder-layers", "2"])
    cfg = convert_namespace_to_omegaconf(args)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    built = sum(p.numel() for p in model.parameters())
    assert json.loads((out / "gmlp" / "seed1" / "system.json").read_text())["total_params"] == built


def test_a_run_cut_off_resumes_and_ends_as_an_uncut_run(data_dir, tmp_path):
    """--updates 20: one run trains through; the same run cut off at update 10 (an extra
    --max-update 10 stands in for the cut, and the recipe.txt it wrote, which a real cut would
    have written without it, is removed), then given the same command, resumes from its
    checkpoint and ends with the uncut run's validation loss and trailing perplexity. Done runs
    are not redone (nor redrawn once their checkpoints are gone), and a run is not resumed with
    other flags."""
    flags = ("--updates", "20", "--seeds", "1", "--data", str(data_dir.parent), "--systems",
             "smlp_deterministic")
    small = ("--batch-size", "4", "--max-valid-steps", "2", "--log-interval", "5",
             "--validate-interval-updates", "10", "--save-interval-updates", "10")
    finals = []
    for out, cut in ((tmp_path / "uncut", False), (tmp_path / "cut", True)):
        run = out / "smlp_deterministic" / "seed1"
        if cut:
            result = compare(*flags, "--out", str(out), "--", *small, "--max-update", "10")
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            (run / "recipe.txt").unlink()
        result = compare(*flags, "--out", str(out), "--", *small)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        log = (run / "train.log").read_text()
        assert ("(epoch 1 @ 10 updates)" in log) == cut  # fairseq's "Loaded checkpoint" line
        losses = re.findall(r'"valid_loss": "?([0-9.]+)"?, .*"valid_num_updates": "?(\d+)', log)
        trailing = re.search(r"Perplexity: ([0-9.]+)", (run / "valid_trailing.log").read_text())
        finals.append((losses[-1], trailing.group(1)))
        assert losses[-1][1] == "20"
    assert finals[0] == finals[1]
    # Done, and as in a clone of committed results, without checkpoints: the run is not redone,
    # and without its routing picture it is left as it is, with no warning and its routing.log
    # untouched.
    run = tmp_path / "cut" / "smlp_deterministic" / "seed1"
    routing_log = (run / "routing.log").read_text()
    for stale in (run / "routing.png", run / "checkpoints" / "checkpoint_last.pt"):
        stale.unlink()
    result = compare(*flags, "--out", str(tmp_path / "cut"), "--", *small)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "smlp_deterministic, seed 1: done earlier" in result.stdout
    assert "no routing picture" not in result.stderr
    assert not (run / "routing.png").exists()
    assert (run / "routing.log").read_text() == routing_log
    result = compare(*flags, "--out", str(tmp_path / "cut"), "--", *small, "--lr", "1e-3")
    assert result.returncode == 1
    assert "seed1 was started with other flags (its recipe.txt)" in result.stderr
