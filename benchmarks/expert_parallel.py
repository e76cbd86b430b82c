"""Training throughput of the same tiny sMLP on 1 and on N CPU ranks (experts spread over the
ranks), and the share of training time the ranks spend exchanging tokens and feature columns by
all-to-all.

    python benchmarks/expert_parallel.py data/sotu/bin [--ranks 2] [--updates 100]

Each rank trains on its own batches of --batch-size sequences (the global batch grows with the
ranks), and uses cores / ranks threads. tokens/s is fairseq's own figure for the whole job; the
all-to-all time is the wall time inside torch.distributed.all_to_all_single (synchronous on
gloo), forward and backward, averaged over ranks.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import fairseq_smlp

USER_DIR = str(Path(fairseq_smlp.__file__).parent)
A2A_LINE = "all_to_all_seconds"


def train_flags(data: str, updates: int):
    return [
        data, "--user-dir", USER_DIR, "--task", "language_modeling",
        "--arch", "smlp_deterministic_tiny", "--criterion", "moe_cross_entropy",
        "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
        "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(updates),
        "--disable-validation", "--no-save", "--log-format", "simple",
        "--log-interval", str(updates), "--num-workers", "0", "--cpu",
    ]


def worker(flags) -> None:
    """One rank under torchrun: fairseq-train with all_to_all_single timed."""
    import torch.distributed as dist
    from fairseq_cli import train

    spent = [0.0]
    exchange = dist.all_to_all_single

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return exchange(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    dist.all_to_all_single = timed
    sys.argv = ["fairseq-train", *flags, "--ddp-backend", "legacy_ddp",
                "--distributed-backend", "gloo", "--distributed-init-method", "env://",
                "--distributed-no-spawn", "--distributed-world-size", os.environ["WORLD_SIZE"],
                "--distributed-rank", os.environ["RANK"]]
    train.cli_main()
    print(f"{A2A_LINE} {spent[0]:.4f}", flush=True)


def measure(data: str, ranks: int, updates: int, threads: int):
    flags = train_flags(data, updates)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if ranks == 1:
        command = [sys.executable, "-m", "fairseq_cli.train", *flags]
    else:
        command = ["torchrun", "--standalone", "--nproc-per-node", str(ranks), __file__,
                   "--worker", *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        sys.exit(f"training on {ranks} rank(s) failed:\n{output[-3000:]}")
    # The last epoch's summary from fairseq's 'train' logger (formatted by fairseq-train itself,
    # or plainly when the workers' logging was set up first).
    summaries = re.findall(r"(?:\| train \||INFO:train:)\s*epoch \d+ \|(.*)", output)
    if len(summaries) != 1:
        sys.exit(f"--updates {updates} on {ranks} rank(s) ran {len(summaries)} epochs of {data}: "
                 f"use a larger corpus (the bundled one) or fewer updates, so that the "
                 f"all-to-all time and fairseq's per-epoch figures cover the same steps")
    summary = summaries[0]
    wps = float(re.search(r"wps ([\d.]+)", summary).group(1))
    train_wall = float(re.search(r"train_wall ([\d.]+)", summary).group(1))
    exchanged = [float(x) for x in re.findall(rf"{A2A_LINE} ([\d.]+)", output)]
    share = sum(exchanged) / len(exchanged) / train_wall if exchanged else 0.0
    return wps, share


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--updates", type=int, default=100)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{'ranks':>6}{'threads/rank':>14}{'tokens/s':>12}{'x 1 rank':>10}{'all-to-all':>12}")
    baseline = None
    for ranks in [1, args.ranks]:
        threads = max(1, cores // ranks)
        wps, share = measure(args.data, ranks, args.updates, threads)
        baseline = baseline or wps
        print(f"{ranks:>6}{threads:>14}{wps:>12.0f}{wps / baseline:>10.2f}{share:>11.1%}")


if __name__ == "__main__":
    main()
