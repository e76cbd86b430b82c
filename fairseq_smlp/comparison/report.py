"""The comparison report: a table and plots of validation perplexity from fairseq-train logs,
over one or several seeds of each system.

    python -m fairseq_smlp.comparison.report RUNS_DIR [--out DIR] [--reference NAME]

RUNS_DIR holds one directory per system, named after it (the name is the row of the table),
holding one run per seed in ``seed<N>/`` (or a single run in the directory itself). A run is
``train.log``, fairseq-train's stdout and stderr with ``--log-format json``; ``system.json``,
what ``python -m fairseq_smlp.comparison.flops ... --json`` says of the system (arch, task,
training FLOPs per token, total and active parameters); and optionally ``valid_trailing.log``,
fairseq-eval-lm's output for the run's last checkpoint under ``--task partial_prediction_lm``
(the perplexity over the trailing positions of every block, on which every system is ranked
when every run has it) and ``zero_shot/<task>.json``. The report writes ``results.md`` (the
table of means and min-max spreads over the seeds, also printed), ``results.json`` (the same
figures, each seed's and each validation curve, in strict JSON: null for a perplexity that is
NaN or infinite) and two plots, ``valid_ppl_vs_time.png`` and ``valid_ppl_vs_updates.png``, a band
over the seeds around each system's mean curve. A seed whose final validation or trailing
perplexity is NaN or infinite diverged: it is named in the table and left out of its system's
figures.
"""

import argparse
import functools
import json
import logging
import math
import os
import re
import statistics
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# Importing this package imports fairseq, whose text_to_speech task sets the root logger to DEBUG
# (logging.basicConfig): keep matplotlib's debug messages, from its import on, out of the output.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from ..partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length  # noqa: E402
from . import regime  # noqa: E402
from .systems import PARTIAL_LM  # noqa: E402
from .train_log import (  # noqa: E402
    ReportError, TrainLog, ValidPoint, read_eval_lm_ppl, read_json_object, read_train_log,
)
from .zero_shot_table import (  # noqa: E402
    ZERO_SHOT_DIR, TaskScore, read_zero_shot, zero_shot_markdown,
)

TRAIN_LOG, SYSTEM_JSON, TRAILING_LOG = "train.log", "system.json", "valid_trailing.log"
THROUGHPUT_JSON = "throughput.json"
MEASURED_APART = "tokens/s measured apart"
SEED_DIR = re.compile(r"seed(\d+)")
RESULTS_MD, RESULTS_JSON = "results.md", "results.json"
PLOT_VS_TIME, PLOT_VS_UPDATES = "valid_ppl_vs_time.png", "valid_ppl_vs_updates.png"
ROUTING_PICTURE = "routing.png"
DEFAULT_REFERENCE = "transformer"
# The system.json keys the report reads, and which of them are numbers.
SYSTEM_TEXT_KEYS = ("arch", "task")
SYSTEM_NUMBER_KEYS = ("train_flops_per_token", "total_params", "active_params",
                      "tokens_per_sample")

NEVER = "—"
DIVERGED = "diverged"
PARTIAL_MARK, INCOMPLETE_MARK = "‡", "†"
COUNT_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
FLOP_UNITS = ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "KFLOPs"), (1.0, "FLOPs"))
# Plot time axes in the largest unit of which the longest run spans at least two.
TIME_UNITS = ((3600.0, "hours"), (60.0, "minutes"), (1.0, "seconds"))
# Points of the grid on which a system's seeds are averaged in the plots.
GRID_POINTS = 100


# ----------------------------------------------------------------------------- reading runs


@dataclass(frozen=True)
class Run:
    """One seed of one system."""

    name: str  # the system
    seed: Optional[int]  # None: a single run in the system's directory
    system: dict  # system.json
    log: TrainLog
    trailing_ppl: Optional[float]  # valid_trailing.log's perplexity; None when not scored
    zero_shot: Dict[str, TaskScore]  # zero_shot/<task>.json, by task; empty when not scored


def read_system(path: Path) -> dict:
    how = (
        f"write it with `python -m fairseq_smlp.comparison.flops DATA_BIN <the system's "
        f"fairseq-train flags> --json > {path}`"
    )
    if path.is_dir():
        raise ReportError(f"{path}: a directory; it must be a file: {how}")
    if not path.is_file():
        raise ReportError(f"{path}: missing; {how}")
    system = read_json_object(path, how)
    missing = [key for key in SYSTEM_TEXT_KEYS + SYSTEM_NUMBER_KEYS if key not in system]
    if missing:
        raise ReportError(f"{path}: no {', '.join(missing)}; {how}")
    for key in SYSTEM_NUMBER_KEYS:
        value = system[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{path}: {key} must be a number; got {value!r}")
        if not positive_number(value):
            raise ReportError(f"{path}: {key} must be a finite number > 0; got {value!r}; {how}")
    return system


def positive_number(value) -> bool:
    """A JSON number (not a bool), finite and > 0."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < math.inf)


@dataclass(frozen=True)
class Throughput:
    """Tokens/s of each run label measured apart (benchmarks/train_throughput.py --json-out):
    the time to a perplexity is then the updates a run took to reach it, times its tokens per
    update, over that rate, whatever else shared the machine while it trained."""

    tokens_per_second: Dict[str, float]
    device: str
    path: Path


def read_throughput(path: Path) -> Throughput:
    how = ("write it with `python benchmarks/train_throughput.py DATA_BIN --systems <the runs' "
           f"labels> --json-out {path}`")
    if not path.is_file():
        raise ReportError(f"{path}: no such file; {how}")
    figures = read_json_object(path, how)
    rates = figures.get("tokens_per_second")
    if not isinstance(rates, dict) or not all(map(positive_number, rates.values())):
        raise ReportError(f"{path}: tokens_per_second must map run labels to rates > 0; {how}")
    return Throughput(rates, str(figures.get("device", "unknown device")), path)


def read_run(name: str, seed: Optional[int], path: Path) -> Run:
    return Run(name, seed, read_system(path / SYSTEM_JSON), read_train_log(path / TRAIN_LOG),
               read_eval_lm_ppl(path / TRAILING_LOG), read_zero_shot(path))


def read_seeds(system_dir: Path) -> List[Run]:
    """The system's runs: one per seed<N>/ directory, by seed, else the directory itself."""
    seeds = sorted((int(match.group(1)), path) for path in system_dir.iterdir()
                   if path.is_dir() and (match := SEED_DIR.fullmatch(path.name)))
    if not seeds:
        return [read_run(system_dir.name, None, system_dir)]
    runs = [read_run(system_dir.name, seed, path) for seed, path in seeds]
    archs = {run.system["arch"] for run in runs}
    if len(archs) > 1:
        raise ReportError(f"{system_dir}: its seeds are runs of different archs "
                          f"({', '.join(sorted(archs))}); one directory holds one system")
    return runs


def read_runs(runs_dir: Path, skip: Sequence[Path] = ()) -> Dict[str, List[Run]]:
    """Every system directory under runs_dir (hidden ones and those in `skip` left out), with
    its seeds."""
    if not runs_dir.is_dir():
        raise ReportError(f"RUNS_DIR {runs_dir}: no such directory")
    skipped = {path.resolve() for path in skip}
    system_dirs = sorted(
        path for path in runs_dir.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.resolve() not in skipped
    )
    if not system_dirs:
        raise ReportError(
            f"RUNS_DIR {runs_dir} holds no run directories; expected one directory per system "
            f"(e.g. {runs_dir / DEFAULT_REFERENCE}) holding {TRAIN_LOG} and {SYSTEM_JSON}, "
            f"or one seed<N>/ directory per seed holding them, as examples/compare_cpu.sh "
            f"writes them"
        )
    return {path.name: read_seeds(path) for path in system_dirs}


# ----------------------------------------------------------------------------- the numbers


@dataclass(frozen=True)
class Spread:
    """A figure over a system's seeds."""

    mean: float
    min: float
    max: float
    std: float  # the sample standard deviation; 0 for one seed
    values: List[float]  # by seed

    @classmethod
    def of(cls, values: Sequence[Optional[float]]) -> Optional["Spread"]:
        """None when a seed has no value."""
        if not values or any(value is None for value in values):
            return None
        values = [float(value) for value in values]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), min(values), max(values), std, values)


class Figures:
    """A row of the report, a seed's or a system's. ``partial``: whether its validation covers
    the trailing positions only (a partial-prediction run's, which has a
    ``prediction_fraction``)."""

    prediction_fraction: Optional[float]

    @property
    def partial(self) -> bool:
        return self.prediction_fraction is not None


@dataclass(frozen=True)
class Row(Figures):
    """One seed's figures."""

    system: str
    seed: Optional[int]
    diverged: bool  # its final validation or trailing perplexity is NaN or infinite
    arch: str
    task: str
    final_valid_ppl: float
    best_valid_ppl: float
    trailing_ppl: Optional[float]
    num_updates: int
    train_tokens: float
    train_seconds: float
    tokens_per_second: Optional[float]
    total_params: float
    active_params: float
    train_flops_per_token: float
    seconds_to_reference: Optional[float]  # None: never reached, or no reference
    speedup: Optional[float]  # the reference's mean seconds_to_reference over this one's
    log_complete: bool
    prediction_fraction: Optional[float]  # partial-prediction runs only
    valid: List[ValidPoint]


@dataclass(frozen=True)
class SystemRow(Figures):
    """A system's figures over its seeds that did not diverge; None, every one of them, when
    all seeds diverged."""

    system: str
    arch: str
    task: str
    seeds: int  # every seed run
    finite_seeds: int  # the seeds that did not diverge, which the figures are over
    final_valid_ppl: Optional[Spread]
    best_valid_ppl: Optional[Spread]
    trailing_ppl: Optional[Spread]  # None unless every seed was scored
    num_updates: Optional[Spread]
    tokens_per_second: Optional[Spread]
    train_seconds: Optional[Spread]
    total_params: float
    active_params: float
    train_flops_per_token: float
    reached: int  # seeds (of finite_seeds) that reached the reference's perplexity
    seconds_to_reference: Optional[Spread]  # None unless every seed reached it
    speedup: Optional[Spread]
    log_complete: bool  # every seed's
    prediction_fraction: Optional[float]
    runs: List[Row]  # every seed's, a diverged one's included

    @property
    def diverged(self) -> bool:
        """Every seed diverged: the system has no figures."""
        return self.finite_seeds == 0


@dataclass(frozen=True)
class Report:
    rows: List[SystemRow]  # in rank order (see rank)
    reference: Optional[str]
    reference_ppl: Optional[float]  # what every system is timed to reach; None: nothing (timed)
    ranked_on_trailing: bool  # every run has its trailing perplexity
    zero_shot: Dict[str, Dict[str, TaskScore]]  # system -> task -> score, in the rows' order
    throughput: Optional[Throughput] = None  # what timed the runs, if not their own wall-clock


def choose_reference(runs: Dict[str, List[Run]], reference: Optional[str]) -> Optional[str]:
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else None
    if reference not in runs:
        raise ReportError(f"--reference {reference}: no such run; valid: {', '.join(runs)}")
    if any(map(is_partial, runs[reference])):
        whole = [name for name, seeds in runs.items() if not any(map(is_partial, seeds))]
        raise ReportError(
            f"--reference {reference}: its validation perplexity covers the trailing positions "
            f"only, which no other system's is timed on; valid: {', '.join(whole) or 'none'}")
    return reference


def wall_clock(point: ValidPoint) -> float:
    return point.seconds


def seconds_to_reach(valid: Sequence[ValidPoint], ppl: float,
                     clock: Callable[[ValidPoint], float] = wall_clock) -> Optional[float]:
    """When the run reached perplexity ``ppl``: interpolated linearly in log-perplexity between
    the last validation above it and the first at or below it (the time of the first validation
    when that one is already there); None when no validation reached it. ``clock``: the time of
    a validation (default: fairseq's wall-clock at it)."""
    for index, point in enumerate(valid):
        if point.ppl <= ppl:
            break
    else:
        return None
    if index == 0:
        return clock(point)
    before = valid[index - 1]
    if not math.isfinite(before.ppl):
        return clock(point)
    share = math.log(before.ppl / ppl) / math.log(before.ppl / point.ppl)
    return clock(before) + share * (clock(point) - clock(before))


def processed_per_scored(tokens_per_sample: int, prediction_fraction: float) -> float:
    """Tokens a partial-prediction run processes per token it scores: whole blocks of
    ``tokens_per_sample``, of which the trailing share is scored."""
    return tokens_per_sample / (tokens_per_sample
                                - context_length(tokens_per_sample, prediction_fraction))


def is_partial(run: Run) -> bool:
    return run.system["task"] == PARTIAL_LM


def diverged(run: Run) -> bool:
    """Whether the run ended in a NaN or infinite perplexity: its final validation's, or its
    trailing one."""
    return not math.isfinite(run.log.valid[-1].ppl) or (
        run.trailing_ppl is not None and not math.isfinite(run.trailing_ppl))


def reference_target(runs: Dict[str, List[Run]], reference: Optional[str]) -> Optional[float]:
    """The perplexity every system is timed to reach: the highest final validation perplexity
    of the reference's seeds that did not diverge, which each of them reached; None when every
    one diverged. Where some of those seeds finished training (fairseq's closing line), only
    theirs count: the last validation of a run still going, or cut off, is no final one."""
    if reference is None:
        return None
    finite = [run for run in runs[reference] if not diverged(run)]
    finished = [run for run in finite if run.log.complete] or finite
    return max((run.log.valid[-1].ppl for run in finished), default=None)


def updates_clock(point: ValidPoint, seconds_per_update: float) -> float:
    return point.num_updates * seconds_per_update


def seed_row(run: Run, target: Optional[float], rate: Optional[float] = None) -> Row:
    """The run's figures; its speed-up is set once the reference's time is known. ``rate``:
    its tokens/s measured apart, which then times it instead of its own wall-clock."""
    log, system = run.log, run.system
    finite = [point.ppl for point in log.valid if math.isfinite(point.ppl)]
    partial = is_partial(run)
    # fairseq counts a partial-prediction run's scored tokens; count what it processed.
    processed = (processed_per_scored(system["tokens_per_sample"], log.prediction_fraction)
                 if partial else 1.0)
    # A partial-prediction curve covers the trailing positions only: it is not timed against
    # a whole-sequence perplexity.
    clock = wall_clock
    if rate is not None:  # updates x tokens per update / the measured tokens/s
        seconds_per_update = log.train_tokens * processed / max(log.num_updates, 1) / rate
        clock = functools.partial(updates_clock, seconds_per_update=seconds_per_update)
    seconds = (seconds_to_reach(log.valid, target, clock)
               if target is not None and not partial else None)
    return Row(
        system=run.name,
        seed=run.seed,
        diverged=diverged(run),
        arch=system["arch"],
        task=system["task"],
        final_valid_ppl=log.valid[-1].ppl,
        best_valid_ppl=min(finite, default=log.valid[-1].ppl),
        trailing_ppl=run.trailing_ppl,
        num_updates=log.num_updates,
        train_tokens=log.train_tokens * processed,
        train_seconds=log.seconds,
        tokens_per_second=(None if log.tokens_per_second is None
                           else log.tokens_per_second * processed),
        total_params=system["total_params"],
        active_params=system["active_params"],
        train_flops_per_token=system["train_flops_per_token"],
        seconds_to_reference=seconds,
        speedup=None,
        log_complete=log.complete,
        prediction_fraction=log.prediction_fraction if partial else None,
        valid=log.valid,
    )


def system_row(rows: List[Row]) -> SystemRow:
    """The figures over the seeds that did not diverge."""
    first = rows[0]
    finite = [row for row in rows if not row.diverged]

    def spread(field: str) -> Optional[Spread]:
        return Spread.of([getattr(row, field) for row in finite])

    return SystemRow(
        system=first.system,
        arch=first.arch,
        task=first.task,
        seeds=len(rows),
        finite_seeds=len(finite),
        final_valid_ppl=spread("final_valid_ppl"),
        best_valid_ppl=spread("best_valid_ppl"),
        trailing_ppl=spread("trailing_ppl"),
        num_updates=spread("num_updates"),
        tokens_per_second=spread("tokens_per_second"),
        train_seconds=spread("train_seconds"),
        # The size of the first seed's model: seeds share flags, and with them the size.
        total_params=first.total_params,
        active_params=first.active_params,
        train_flops_per_token=first.train_flops_per_token,
        reached=sum(row.seconds_to_reference is not None for row in finite),
        seconds_to_reference=spread("seconds_to_reference"),
        speedup=spread("speedup"),
        log_complete=all(row.log_complete for row in rows),
        prediction_fraction=first.prediction_fraction,
        runs=rows,
    )


def rank(rows: List[SystemRow], on_trailing: bool) -> List[SystemRow]:
    """By mean trailing perplexity when every system has one; else by mean final validation
    perplexity, partial-prediction systems (whose validation covers the trailing positions
    only) after the others; systems whose every seed diverged last."""
    def key(row: SystemRow):
        figure = row.trailing_ppl if on_trailing else row.final_valid_ppl
        ppl = math.inf if figure is None else figure.mean
        return (row.diverged, not on_trailing and row.partial, not math.isfinite(ppl), ppl,
                row.system)

    return sorted(rows, key=key)


def mean_zero_shot(runs: List[Run]) -> Dict[str, TaskScore]:
    """Each task's accuracy averaged over the seeds scored on it, which must have been scored
    alike: by the same rule, on the same examples."""
    scores: Dict[str, TaskScore] = {}
    tasks = sorted({task for run in runs for task in run.zero_shot})
    for task in tasks:
        scored = {run.seed: run.zero_shot[task] for run in runs if task in run.zero_shot}
        for field in ("rule", "examples", "data"):
            values = {seed: getattr(score, field) for seed, score in scored.items()}
            if len(set(values.values())) > 1:
                listed = ", ".join(f"seed {seed}: {value}" for seed, value in values.items())
                raise ReportError(
                    f"{runs[0].name}: the seeds' {ZERO_SHOT_DIR}/{task}.json differ in {field} "
                    f"({listed}), so their mean would mix two measurements; score every seed "
                    f"with the same --accuracy, --max-examples and data")
        first = next(iter(scored.values()))
        scores[task] = TaskScore(statistics.fmean(s.accuracy for s in scored.values()),
                                 first.rule, first.examples,
                                 max(s.truncated for s in scored.values()), first.data,
                                 seeds=len(scored))
    return scores


def summarize(runs: Dict[str, List[Run]], reference: Optional[str] = None,
              throughput: Optional[Throughput] = None) -> Report:
    reference = choose_reference(runs, reference)
    target = reference_target(runs, reference)
    rates: Dict[str, Optional[float]] = {name: None for name in runs}
    if throughput is not None:
        missing = [name for name in runs if name not in throughput.tokens_per_second]
        if missing:
            raise ReportError(f"{throughput.path}: no tokens/s for {', '.join(missing)}; measure "
                              f"every run label with benchmarks/train_throughput.py --systems")
        rates = {name: throughput.tokens_per_second[name] for name in runs}
    seed_rows = {name: [seed_row(run, target, rates[name]) for run in seeds]
                 for name, seeds in runs.items()}
    times = [row.seconds_to_reference for row in seed_rows.get(reference, [])
             if not row.diverged]
    if times and all(seconds is not None for seconds in times):
        reference_seconds = statistics.fmean(times)
        seed_rows = {name: [replace(row, speedup=None if not row.seconds_to_reference
                                    else reference_seconds / row.seconds_to_reference)
                            for row in seeds] for name, seeds in seed_rows.items()}
    rows = [system_row(seeds) for seeds in seed_rows.values()]
    finite = [row for row in rows if not row.diverged]
    on_trailing = bool(finite) and all(row.trailing_ppl is not None for row in finite)
    rows = rank(rows, on_trailing)
    zero_shot = {row.system: mean_zero_shot([run for run in runs[row.system]
                                             if not diverged(run)]) for row in rows}
    return Report(rows, reference, target, on_trailing, zero_shot, throughput)


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


def spread_cell(spread: Optional[Spread], show: Callable[[float], str],
                suffix: str = "") -> str:
    """'mean' for one seed, 'mean (min–max)' for several; NEVER without a figure."""
    if spread is None:
        return NEVER
    if len(spread.values) == 1:
        return show(spread.mean) + suffix
    return f"{show(spread.mean)}{suffix} ({show(spread.min)}–{show(spread.max)}{suffix})"


def ppl_text(ppl: float) -> str:
    return f"{ppl:.2f}"


def ppl_cell(row: SystemRow, spread: Optional[Spread]) -> str:
    return DIVERGED if row.diverged else spread_cell(spread, ppl_text)


def seeds_cell(row: SystemRow) -> str:
    """'3'; '2 of 3 (seed 2 diverged)' where seeds diverged: the figures are over the others."""
    if row.finite_seeds == row.seeds:
        return str(row.seeds)
    seeds = [str(run.seed) for run in row.runs if run.diverged and run.seed is not None]
    which = (DIVERGED if not seeds else
             f"seed {seeds[0]} {DIVERGED}" if len(seeds) == 1 else
             f"seeds {', '.join(seeds[:-1])} and {seeds[-1]} {DIVERGED}")
    return f"{row.finite_seeds} of {row.seeds} ({which})"


def timed(report: Report) -> bool:
    """Whether the systems are timed to a perplexity of the reference's."""
    return report.reference is not None and report.reference_ppl is not None


def markdown(report: Report, written: date, routing: Dict[str, str]) -> str:
    rows = report.rows
    scale, unit = flops_unit([row.train_flops_per_token for row in rows])
    measured = report.throughput is not None
    header = [
        "system", "arch", "seeds", "valid ppl (final)", "valid ppl (trailing)",
        "updates", "tokens/s", *([MEASURED_APART] if measured else []), "params (total)",
        "params (active)", f"train {unit}/token", "wall-clock",
    ]
    if timed(report):
        header += [f"time to ppl {report.reference_ppl:.2f} ({report.reference})", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        marks = (PARTIAL_MARK if row.partial else "") + (
            "" if row.log_complete else INCOMPLETE_MARK
        )
        cells = [
            row.system + marks, row.arch, seeds_cell(row),
            ppl_cell(row, row.final_valid_ppl), ppl_cell(row, row.trailing_ppl),
            spread_cell(row.num_updates, lambda n: f"{n:,.0f}"),
            spread_cell(row.tokens_per_second, lambda n: f"{n:,.0f}"),
            *([f"{report.throughput.tokens_per_second[row.system]:,.0f}"] if measured else []),
            human_count(row.total_params), human_count(row.active_params),
            f"{row.train_flops_per_token / scale:.2f}",
            spread_cell(row.train_seconds, human_duration),
        ]
        if timed(report):
            if row.seconds_to_reference is None and 0 < row.reached:
                cells += [f"{row.reached} of {row.finite_seeds} seeds", NEVER]
            else:
                cells += [spread_cell(row.seconds_to_reference, human_duration),
                          spread_cell(row.speedup, lambda x: f"{x:.2f}", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    body = lines + [""] + notes(report) + regime_markdown(report)
    body += zero_shot_markdown(report.zero_shot) + routing_markdown(routing)
    return "\n".join(body + ["", f"Written {written.isoformat()}."]) + "\n"


def routing_pictures(report: Report, runs_dir: Path, out_dir: Path) -> Dict[str, str]:
    """system -> the path, relative to ``out_dir``, of the routing picture of its seed 1
    (``ROUTING_PICTURE``, which examples/compare_cpu.sh draws for each sparse system)."""
    found = {}
    for row in report.rows:
        picture = runs_dir / row.system / "seed1" / ROUTING_PICTURE
        if picture.is_file():
            found[row.system] = os.path.relpath(picture, out_dir)
    return found


def routing_markdown(routing: Dict[str, str]) -> List[str]:
    if not routing:
        return []
    links = ", ".join(f"[{system}]({path})" for system, path in routing.items())
    return ["", f"Where the tokens go, per expert of each MoE layer, in seed 1's last checkpoint "
                f"(python -m fairseq_smlp.routing_map): {links}."]


def regime_check(report: Report) -> Optional[regime.RegimeCheck]:
    """The regime check of the runs that have every seed's trailing perplexity."""
    scored = [row for row in report.rows if row.trailing_ppl is not None]
    # The speed claim is about the dense Transformer's perplexity, the default reference.
    timed = report.reference == regime.DENSE_TRANSFORMER
    clock = ("each at the tokens/s of its own runs" if report.throughput is None else
             f"each at its tokens/s measured apart ({report.throughput.device})")
    return regime.check(
        {row.system: regime.SeedRange.of(row.trailing_ppl.values) for row in scored},
        {row.system: row.seconds_to_reference.mean if row.seconds_to_reference else None
         for row in report.rows if timed}, clock)


def regime_markdown(report: Report) -> List[str]:
    check = regime_check(report)
    return [] if check is None else regime.markdown(check)


def notes(report: Report) -> List[str]:
    seeds = sorted({row.seeds for row in report.rows})
    several = seeds[-1] > 1
    order = ("Ranked by the trailing perplexity" if report.ranked_on_trailing else
             "Ranked by final validation perplexity (a partial-prediction system last, unranked: "
             "no run here has its trailing perplexity)")
    text = [
        ("Each figure is the mean over a system's seeds, with the lowest and highest seed in "
         "brackets; figures whose ranges overlap are not told apart by these runs. "
         if several else "")
        + f"{order}. Valid ppl (final): fairseq's valid_ppl at the last validation, during "
        f"training (on the part of the validation set it reads: --max-valid-steps); trailing: "
        f"fairseq-eval-lm's perplexity of the last checkpoint on the whole validation set, "
        f"over the trailing positions of every block only (--task {PARTIAL_LM}; the trailing "
        f"{DEFAULT_PREDICTION_FRACTION:.0%} unless --prediction-fraction says otherwise), the one "
        f"column on which every system, a partial-prediction one included, is scored alike. "
        f"tokens/s: every token a training step processed, per second of wall-clock; "
        f"wall-clock: fairseq's `wall`, from start-up to the last log line, validation and "
        f"checkpoints included"
        + ("" if report.throughput is None else
           f" (each run's own, whatever else the machine ran; {MEASURED_APART}: "
           f"{report.throughput.path.name}'s figure for the run label, which the time to the "
           f"target uses)")
        + f". Parameters and training FLOPs per token: each run's "
        f"system.json (`python -m fairseq_smlp.comparison.flops`).",
    ]
    if timed(report):
        highest = " (the highest of its seeds', which each of them reached)" if several else ""
        when = ("the wall-clock at which" if report.throughput is None else
                "the updates after which")
        text.append(
            f"Time to ppl {report.reference_ppl:.2f}: {when} a run reached "
            f"{report.reference}'s final validation perplexity{highest}, interpolated in "
            f"log-perplexity between the validations around it ({NEVER}: never; \"k of N "
            f"seeds\": only k seeds did, and no mean is given)"
            + ("" if report.throughput is None else
               f", times its tokens per update, over its tokens/s measured apart "
               f"({report.throughput.path.name}: {report.throughput.device})")
            + f"; speed-up: {report.reference}'s mean time to that perplexity over the run's."
        )
    elif report.reference:
        text.append(
            f"No time to a perplexity: every seed of {report.reference}, the reference, "
            f"diverged; pass --reference NAME for the time each system took to reach NAME's "
            f"final validation perplexity."
        )
    else:
        text.append(
            f"No reference system ({DEFAULT_REFERENCE} is not among the runs): pass --reference "
            f"NAME for the time each system took to reach NAME's final validation perplexity."
        )
    if any(row.finite_seeds < row.seeds for row in report.rows):
        text.append(
            f"{DIVERGED.capitalize()}: a seed whose final validation perplexity, or trailing "
            f"one, is NaN or infinite. It is named in the seeds column and left out of every "
            f"figure of its system, which are over the other seeds (\"2 of 3\": over 2 of the "
            f"3 seeds run); a system all of whose seeds diverged has no figure and comes last."
        )
    for row in report.rows:
        if row.partial:
            text.append(
                f"{PARTIAL_MARK} {row.system} is trained and validated with --task {PARTIAL_LM}: "
                f"its validation perplexity covers the trailing {row.prediction_fraction:.0%} of "
                f"each block only (the rest is context it routes on), so it is compared with the "
                f"others on the trailing column alone and not timed against a whole-block "
                f"perplexity; its tokens/s, like theirs, counts every token it processed."
            )
    for row in report.rows:
        if not row.log_complete:
            text.append(
                f"{INCOMPLETE_MARK} {row.system}: a log ends without fairseq's closing \"done "
                f"training\" line (the run crashed or is still going); its figures stop at its "
                f"last line, and validations after its last training line are timed at the pace "
                f"of its last logged interval."
            )
    if several and any(report.zero_shot.values()):
        text.append("Zero-shot accuracy below: the mean over the seeds scored.")
    return "\n\n".join(text).split("\n")


def strict(value):
    """``value`` with every NaN or infinite float as None, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def results_json(report: Report, runs_dir: Path, written: date,
                 routing: Dict[str, str]) -> dict:
    """The report's figures; a NaN or infinite perplexity is None (a diverged seed's)."""
    return strict({
        "written": written.isoformat(),
        "runs_dir": str(runs_dir),
        "reference": report.reference,
        "reference_valid_ppl": report.reference_ppl,
        "ranked_on_trailing": report.ranked_on_trailing,
        "systems": {row.system: asdict(row) for row in report.rows},
        "zero_shot": {system: {task: asdict(score) for task, score in tasks.items()}
                      for system, tasks in report.zero_shot.items()},
        "regime": None if (check := regime_check(report)) is None else asdict(check),
        "throughput": None if report.throughput is None else {
            "file": str(report.throughput.path), "device": report.throughput.device,
            "tokens_per_second": report.throughput.tokens_per_second},
        "routing_pictures": routing,
    })


# ----------------------------------------------------------------------------- plots


def finite_curve(row: Row, x_of: Callable[[ValidPoint], float]) -> Tuple[np.ndarray, np.ndarray]:
    points = [point for point in row.valid if math.isfinite(point.ppl)]
    return (np.array([x_of(point) for point in points], dtype=float),
            np.log(np.array([point.ppl for point in points], dtype=float)))


def seed_band(row: SystemRow, x_of: Callable[[ValidPoint], float]):
    """(x, mean, low, high) of the seeds' perplexities on a grid over the span every seed
    covers, each curve interpolated in log-perplexity; the mean is geometric. Seeds that
    diverged or have no finite validation are left out; None when no seed is left."""
    curves = [curve for curve in (finite_curve(run, x_of) for run in row.runs
                                  if not run.diverged) if curve[0].size]
    if not curves:
        return None
    start = max(xs[0] for xs, _ in curves)
    stop = min(xs[-1] for xs, _ in curves)
    x = np.linspace(start, stop, GRID_POINTS) if stop > start else np.array([start])
    logs = np.stack([np.interp(x, xs, y) for xs, y in curves])  # (seeds, points)
    return x, np.exp(logs.mean(0)), np.exp(logs.min(0)), np.exp(logs.max(0))


def plot_valid_ppl(
    report: Report, path: Path, x_of: Callable[[ValidPoint], float], x_label: str
) -> None:
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in report.rows:
        label = row.system
        if row.partial:
            label += f" (trailing {row.prediction_fraction:.0%} only)"
        style = "--" if row.partial else "-"
        if row.finite_seeds < row.seeds:
            label += f", {row.finite_seeds} of {row.seeds} seeds (the rest {DIVERGED})"
        elif row.seeds > 1:
            label += f", {row.seeds} seeds"
        if row.finite_seeds == 1:
            run = next(run for run in row.runs if not run.diverged)
            x, log_ppl = finite_curve(run, x_of)
            axes.plot(x, np.exp(log_ppl), marker="o", markersize=3, linestyle=style, label=label)
            continue
        band = seed_band(row, x_of)
        if band is None:
            continue
        x, mean, low, high = band
        line, = axes.plot(x, mean, linestyle=style, label=label)
        axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if timed(report):
        axes.axhline(report.reference_ppl, color="grey", linestyle=":", linewidth=1,
                     label=f"{report.reference}'s final")
    axes.set_yscale("log")
    # Plain numbers (40, 60, 100) rather than powers of ten on the perplexity axis.
    axes.yaxis.set_major_formatter(LogFormatter())
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes.set_xlabel(x_label)
    axes.set_ylabel("validation perplexity (log scale)")
    axes.grid(True, which="both", alpha=0.3)
    several = max(row.seeds for row in report.rows) > 1
    axes.legend(fontsize="small", title="band: lowest to highest seed" if several else None,
                title_fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def plot_both(report: Report, out_dir: Path) -> None:
    longest = max(run.train_seconds for row in report.rows for run in row.runs)
    scale, unit = next(((s, u) for s, u in TIME_UNITS if longest >= 2 * s), TIME_UNITS[-1])
    plot_valid_ppl(report, out_dir / PLOT_VS_TIME, lambda point: point.seconds / scale,
                   f"wall-clock training time ({unit})")
    plot_valid_ppl(report, out_dir / PLOT_VS_UPDATES, lambda point: point.num_updates, "updates")


# ----------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_smlp.comparison.report",
        description="Tabulate and plot the validation perplexity of the compared systems from "
        "their fairseq-train logs (RUNS_DIR/<system>/seed<N>/train.log and system.json), with "
        "the mean and spread over the seeds."
    )
    parser.add_argument(
        "runs_dir", type=Path, metavar="RUNS_DIR",
        help="directory with one directory per system, holding one seed<N>/ directory per seed "
        "(or a single run itself): train.log (fairseq-train --log-format json), system.json "
        f"(fairseq_smlp.comparison.flops --json) and optionally {TRAILING_LOG} (fairseq-eval-lm "
        f"--task {PARTIAL_LM})",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"directory for {RESULTS_MD}, {RESULTS_JSON}, {PLOT_VS_TIME} and {PLOT_VS_UPDATES} "
        f"(default: RUNS_DIR)",
    )
    parser.add_argument(
        "--throughput", type=Path, default=None, metavar="FILE",
        help="tokens/s of each run label measured apart (benchmarks/train_throughput.py "
        "--json-out), which then times every run instead of its own wall-clock (default: "
        f"RUNS_DIR/{THROUGHPUT_JSON} where there is one)",
    )
    parser.add_argument(
        "--reference", default=None, metavar="NAME",
        help=f"the run whose final validation perplexity the others are timed to reach (default: "
        f"{DEFAULT_REFERENCE}, when RUNS_DIR has it; without one the time column is left out)",
    )
    args = parser.parse_args(argv)
    out_dir = args.out or args.runs_dir
    if out_dir.exists() and not out_dir.is_dir():
        parser.exit(1, f"{parser.prog}: error: --out {out_dir} is a file; it must be a directory "
                       f"(made if missing)\n")
    written = date.today()
    measured = args.throughput
    if measured is None and (args.runs_dir / THROUGHPUT_JSON).is_file():
        measured = args.runs_dir / THROUGHPUT_JSON
    try:
        throughput = None if measured is None else read_throughput(measured)
        report = summarize(read_runs(args.runs_dir, skip=[out_dir]), args.reference, throughput)
    except ValueError as error:  # a ReportError, or a zero_shot/<task>.json it cannot read
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    routing = routing_pictures(report, args.runs_dir, out_dir)
    table = markdown(report, written, routing)
    (out_dir / RESULTS_MD).write_text(table)
    (out_dir / RESULTS_JSON).write_text(
        json.dumps(results_json(report, args.runs_dir, written, routing), indent=2,
                   allow_nan=False)
        + "\n"
    )
    plot_both(report, out_dir)
    print(table)
    outputs = (RESULTS_MD, RESULTS_JSON, PLOT_VS_TIME, PLOT_VS_UPDATES)
    print(f"wrote {', '.join(str(out_dir / name) for name in outputs)}")


if __name__ == "__main__":
    main()
