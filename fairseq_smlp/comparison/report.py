"""The comparison report: a table and plots of validation perplexity from fairseq-train logs.

    python -m fairseq_smlp.comparison.report RUNS_DIR [--out DIR] [--reference NAME]

RUNS_DIR holds one directory per system, named after it (the name is the row of the table):
``train.log``, fairseq-train's stdout and stderr with ``--log-format json``, and ``system.json``,
what ``python -m fairseq_smlp.comparison.flops ... --json`` says of the system (arch, task,
training FLOPs per token, total and active parameters). The report writes ``results.md`` (the
table, also printed), ``results.json`` (the same numbers and each validation curve) and two
plots, ``valid_ppl_vs_time.png`` and ``valid_ppl_vs_updates.png``.
"""

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# Importing this package imports fairseq, whose text_to_speech task sets the root logger to DEBUG
# (logging.basicConfig): keep matplotlib's debug messages, from its import on, out of the output.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from ..partial_prediction import context_length  # noqa: E402
from .systems import PARTIAL_LM  # noqa: E402
from .train_log import ReportError, TrainLog, ValidPoint, read_train_log  # noqa: E402
from .zero_shot_table import TaskScore, read_zero_shot, zero_shot_markdown  # noqa: E402

TRAIN_LOG, SYSTEM_JSON = "train.log", "system.json"
RESULTS_MD, RESULTS_JSON = "results.md", "results.json"
PLOT_VS_TIME, PLOT_VS_UPDATES = "valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"
DEFAULT_REFERENCE = "transformer"
# The system.json keys the report reads, and which of them are numbers.
SYSTEM_TEXT_KEYS = ("arch", "task")
SYSTEM_NUMBER_KEYS = ("train_flops_per_token", "total_params", "active_params",
                      "tokens_per_sample")

NEVER = "—"
PARTIAL_MARK, INCOMPLETE_MARK = "‡", "†"
COUNT_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
FLOP_UNITS = ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "KFLOPs"), (1.0, "FLOPs"))
# Plot time axes in the largest unit of which the longest run spans at least two.
TIME_UNITS = ((3600.0, "hours"), (60.0, "minutes"), (1.0, "seconds"))


# ----------------------------------------------------------------------------- reading runs


@dataclass(frozen=True)
class Run:
    name: str
    system: dict  # system.json
    log: TrainLog
    zero_shot: Dict[str, TaskScore]  # zero_shot/<task>.json, by task; empty when not scored


def read_system(path: Path) -> dict:
    how = (
        f"write it with `python -m fairseq_smlp.comparison.flops DATA_BIN <the system's "
        f"fairseq-train flags> --json > {path}`"
    )
    if not path.is_file():
        raise ReportError(f"{path}: missing; {how}")
    try:
        system = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not JSON ({error}); {how}") from error
    if not isinstance(system, dict):
        raise ReportError(f"{path}: holds {type(system).__name__}, not a JSON object; {how}")
    missing = [key for key in SYSTEM_TEXT_KEYS + SYSTEM_NUMBER_KEYS if key not in system]
    if missing:
        raise ReportError(f"{path}: no {', '.join(missing)}; {how}")
    for key in SYSTEM_NUMBER_KEYS:
        if isinstance(system[key], bool) or not isinstance(system[key], (int, float)):
            raise ReportError(f"{path}: {key} must be a number; got {system[key]!r}")
    return system


def read_runs(runs_dir: Path, skip: Sequence[Path] = ()) -> Dict[str, Run]:
    """Every run directory under runs_dir (hidden ones and those in `skip` left out)."""
    if not runs_dir.is_dir():
        raise ReportError(f"RUNS_DIR {runs_dir}: no such directory")
    skipped = {path.resolve() for path in skip}
    run_dirs = sorted(
        path for path in runs_dir.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.resolve() not in skipped
    )
    if not run_dirs:
        raise ReportError(
            f"RUNS_DIR {runs_dir} holds no run directories; expected one directory per system "
            f"(e.g. {runs_dir / DEFAULT_REFERENCE}) holding {TRAIN_LOG} and {SYSTEM_JSON}, as "
            f"examples/compare_cpu.sh writes them"
        )
    return {
        path.name: Run(path.name, read_system(path / SYSTEM_JSON), read_train_log(path / TRAIN_LOG),
                       read_zero_shot(path))
        for path in run_dirs
    }


# ----------------------------------------------------------------------------- the numbers


@dataclass(frozen=True)
class Row:
    system: str
    arch: str
    task: str
    final_valid_ppl: float
    best_valid_ppl: float
    num_updates: int
    train_tokens: float
    train_seconds: float
    tokens_per_second: Optional[float]
    total_params: float
    active_params: float
    train_flops_per_token: float
    seconds_to_reference: Optional[float]  # None: never reached, or no reference
    speedup: Optional[float]  # the reference's seconds_to_reference over this one's
    log_complete: bool
    prediction_fraction: Optional[float]  # partial-prediction runs only
    valid: List[ValidPoint]

    @property
    def partial(self) -> bool:
        return self.prediction_fraction is not None


@dataclass(frozen=True)
class Report:
    rows: List[Row]  # by final validation perplexity
    reference: Optional[str]
    reference_ppl: Optional[float]  # the reference's final validation perplexity
    zero_shot: Dict[str, Dict[str, TaskScore]]  # system -> task -> score, in the rows' order


def choose_reference(runs: Dict[str, Run], reference: Optional[str]) -> Optional[str]:
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else None
    if reference not in runs:
        raise ReportError(f"--reference {reference}: no such run; valid: {', '.join(runs)}")
    return reference


def seconds_to_reach(valid: Sequence[ValidPoint], ppl: float) -> Optional[float]:
    """When the run reached perplexity ``ppl``: interpolated linearly in log-perplexity between
    the last validation above it and the first at or below it (the time of the first validation
    when that one is already there); None when no validation reached it."""
    for index, point in enumerate(valid):
        if point.ppl <= ppl:
            break
    else:
        return None
    if index == 0:
        return point.seconds
    before = valid[index - 1]
    if not math.isfinite(before.ppl):
        return point.seconds
    share = math.log(before.ppl / ppl) / math.log(before.ppl / point.ppl)
    return before.seconds + share * (point.seconds - before.seconds)


def processed_per_scored(tokens_per_sample: int, prediction_fraction: float) -> float:
    """Tokens a partial-prediction run processes per token it scores: whole blocks of
    ``tokens_per_sample``, of which the trailing share is scored."""
    return tokens_per_sample / (tokens_per_sample
                                - context_length(tokens_per_sample, prediction_fraction))


def summarize(runs: Dict[str, Run], reference: Optional[str] = None) -> Report:
    reference = choose_reference(runs, reference)
    reference_ppl = runs[reference].log.valid[-1].ppl if reference else None
    reached = {
        name: seconds_to_reach(run.log.valid, reference_ppl) if reference else None
        for name, run in runs.items()
    }
    rows = []
    for name, run in runs.items():
        log, system = run.log, run.system
        finite = [point.ppl for point in log.valid if math.isfinite(point.ppl)]
        mine, theirs = reached[name], reached[reference] if reference else None
        partial = system["task"] == PARTIAL_LM
        # fairseq counts a partial-prediction run's scored tokens; count what it processed.
        processed = (processed_per_scored(system["tokens_per_sample"], log.prediction_fraction)
                     if partial else 1.0)
        rows.append(Row(
            system=name,
            arch=system["arch"],
            task=system["task"],
            final_valid_ppl=log.valid[-1].ppl,
            best_valid_ppl=min(finite, default=log.valid[-1].ppl),
            num_updates=log.num_updates,
            train_tokens=log.train_tokens * processed,
            train_seconds=log.seconds,
            tokens_per_second=(None if log.tokens_per_second is None
                               else log.tokens_per_second * processed),
            total_params=system["total_params"],
            active_params=system["active_params"],
            train_flops_per_token=system["train_flops_per_token"],
            seconds_to_reference=mine,
            speedup=theirs / mine if mine and theirs is not None else None,
            log_complete=log.complete,
            prediction_fraction=log.prediction_fraction if partial else None,
            valid=log.valid,
        ))
    rows.sort(key=lambda row: (not math.isfinite(row.final_valid_ppl), row.final_valid_ppl,
                               row.system))
    zero_shot = {row.system: runs[row.system].zero_shot for row in rows}
    return Report(rows, reference, reference_ppl, zero_shot)


# ----------------------------------------------------------------------------- formatting


def human_count(count: float) -> str:
    """12345678 -> '12.3M'."""
    for scale, suffix in COUNT_SUFFIXES:
        if round(abs(count) / scale, 1) >= 1:
            return f"{count / scale:.1f}{suffix}"
    return f"{count:.0f}"


def flops_unit(values: Sequence[float]) -> Tuple[float, str]:
    """The largest unit of which the column's largest value is at least one."""
    largest = max(values)
    return next(((scale, name) for scale, name in FLOP_UNITS if largest >= scale), FLOP_UNITS[-1])


def human_duration(seconds: Optional[float]) -> str:
    """3725 -> '1h 02m', 125 -> '2m 05s', 42 -> '42s'."""
    if seconds is None:
        return NEVER
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole}s"


def markdown(report: Report, written: date) -> str:
    rows = report.rows
    scale, unit = flops_unit([row.train_flops_per_token for row in rows])
    header = [
        "system", "arch", "valid ppl (final)", "valid ppl (best)", "updates", "tokens/s",
        "params (total)", "params (active)", f"train {unit}/token", "wall-clock",
    ]
    if report.reference:
        header += [f"time to ppl {report.reference_ppl:.2f} ({report.reference})", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        marks = (PARTIAL_MARK if row.partial else "") + (
            "" if row.log_complete else INCOMPLETE_MARK
        )
        cells = [
            row.system + marks, row.arch, f"{row.final_valid_ppl:.2f}", f"{row.best_valid_ppl:.2f}",
            f"{row.num_updates:,}",
            NEVER if row.tokens_per_second is None else f"{row.tokens_per_second:,.0f}",
            human_count(row.total_params), human_count(row.active_params),
            f"{row.train_flops_per_token / scale:.2f}", human_duration(row.train_seconds),
        ]
        if report.reference:
            cells += [human_duration(row.seconds_to_reference),
                      NEVER if row.speedup is None else f"{row.speedup:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    body = lines + [""] + notes(report) + zero_shot_markdown(report.zero_shot)
    return "\n".join(body + ["", f"Written {written.isoformat()}."]) + "\n"


def notes(report: Report) -> List[str]:
    text = [
        "Sorted by final validation perplexity (fairseq's valid_ppl at the last validation; "
        "best: the lowest at any validation). tokens/s: training tokens (fairseq's wpb, tokens "
        "per update, times the updates) per second of wall-clock; wall-clock: fairseq's `wall`, "
        "from start-up to the last log line, validation and checkpoints included. Parameters "
        "and training FLOPs per token: each run's system.json "
        "(`python -m fairseq_smlp.comparison.flops`).",
    ]
    if report.reference:
        text.append(
            f"Time to ppl {report.reference_ppl:.2f}: the wall-clock at which the run reached "
            f"{report.reference}'s final validation perplexity, interpolated in log-perplexity "
            f"between the validations around it ({NEVER}: never); speed-up: "
            f"{report.reference}'s time to that perplexity over the system's."
        )
    else:
        text.append(
            f"No reference system ({DEFAULT_REFERENCE} is not among the runs): pass --reference "
            f"NAME for the time each system took to reach NAME's final validation perplexity."
        )
    for row in report.rows:
        if row.partial:
            text.append(
                f"{PARTIAL_MARK} {row.system} is trained and validated with --task {PARTIAL_LM}: "
                f"its perplexity covers the trailing {row.prediction_fraction:.0%} of each block "
                f"only (the rest is context it routes on), so it is not strictly comparable with "
                f"the others; its tokens/s, like theirs, counts every token it processed."
            )
    for row in report.rows:
        if not row.log_complete:
            text.append(
                f"{INCOMPLETE_MARK} {row.system}: the log ends without fairseq's closing \"done "
                f"training\" line (the run crashed or is still going); its figures stop at its "
                f"last line, and validations after its last training line are timed at the pace "
                f"of its last logged interval."
            )
    return "\n\n".join(text).split("\n")


def results_json(report: Report, runs_dir: Path, written: date) -> dict:
    return {
        "written": written.isoformat(),
        "runs_dir": str(runs_dir),
        "reference": report.reference,
        "reference_valid_ppl": report.reference_ppl,
        "systems": {row.system: asdict(row) for row in report.rows},
        "zero_shot": {system: {task: asdict(score) for task, score in tasks.items()}
                      for system, tasks in report.zero_shot.items()},
    }


# ----------------------------------------------------------------------------- plots


def plot_valid_ppl(
    report: Report, path: Path, x_of: Callable[[ValidPoint], float], x_label: str
) -> None:
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in report.rows:
        points = [point for point in row.valid if math.isfinite(point.ppl)]
        label = row.system
        if row.partial:
            label += f" (trailing {row.prediction_fraction:.0%} only)"
        axes.plot([x_of(point) for point in points], [point.ppl for point in points], marker="o",
                  markersize=3, linestyle="--" if row.partial else "-", label=label)
    if report.reference:
        axes.axhline(report.reference_ppl, color="grey", linestyle=":", linewidth=1,
                     label=f"{report.reference}'s final")
    axes.set_yscale("log")
    # Plain numbers (40, 60, 100) rather than powers of ten on the perplexity axis.
    axes.yaxis.set_major_formatter(LogFormatter())
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.set_xlabel(x_label)
    axes.set_ylabel("validation perplexity (log scale)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def plot_both(report: Report, out_dir: Path) -> None:
    longest = max(row.train_seconds for row in report.rows)
    scale, unit = next(((s, u) for s, u in TIME_UNITS if longest >= 2 * s), TIME_UNITS[-1])
    plot_valid_ppl(report, out_dir / PLOT_VS_TIME, lambda point: point.seconds / scale,
                   f"wall-clock training time ({unit})")
    plot_valid_ppl(report, out_dir / PLOT_VS_UPDATES, lambda point: point.num_updates, "updates")


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_smlp.comparison.report",
        description="Tabulate and plot the validation perplexity of the compared systems from "
        "their fairseq-train logs (RUNS_DIR/<system>/train.log and system.json)."
    )
    parser.add_argument(
        "runs_dir", type=Path, metavar="RUNS_DIR",
        help="directory with one run directory per system, each holding train.log "
        "(fairseq-train --log-format json) and system.json (fairseq_smlp.comparison.flops --json)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"directory for {RESULTS_MD}, {RESULTS_JSON}, {PLOT_VS_TIME} and {PLOT_VS_UPDATES} "
        f"(default: RUNS_DIR)",
    )
    parser.add_argument(
        "--reference", default=None, metavar="NAME",
        help=f"the run whose final validation perplexity the others are timed to reach (default: "
        f"{DEFAULT_REFERENCE}, when RUNS_DIR has it; without one the time column is left out)",
    )
    args = parser.parse_args(argv)
    out_dir = args.out or args.runs_dir
    written = date.today()
    try:
        report = summarize(read_runs(args.runs_dir, skip=[out_dir]), args.reference)
    except ValueError as error:  # a ReportError, or a zero_shot/<task>.json it cannot read
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(report, written)
    (out_dir / RESULTS_MD).write_text(table)
    (out_dir / RESULTS_JSON).write_text(
        json.dumps(results_json(report, args.runs_dir, written), indent=2) + "\n"
    )
    plot_both(report, out_dir)
    print(table)
    outputs = (RESULTS_MD, RESULTS_JSON, PLOT_VS_TIME, PLOT_VS_UPDATES)
    print(f"wrote {', '.join(str(out_dir / name) for name in outputs)}")


if __name__ == "__main__":
    main()
