"""Training throughput of every compared system, side by side in one run: fairseq-train on one
device for a fixed number of updates per system, tokens/s, the ratio to the dense Transformer,
and model FLOPs utilisation (MFU) against the device's matrix-multiply peak, measured in the
same run.

    python benchmarks/train_throughput.py DATA_BIN [--scale cpu] [--updates 60] [--rounds 3]
        [--systems a,b_e8] [--batch-size 16] [--json-out FILE] [-- extra fairseq-train flags]
    python benchmarks/train_throughput.py DATA_BIN --scale gpu --batch-size 16 -- --bf16

Systems and their equal-FLOPs sizes come from fairseq_smlp/comparison/systems.py, FLOPs per
token from fairseq_smlp/comparison/flops.py. Tokens/s counts every token a step processes (for
the partial-prediction system fairseq's own wps counts the scored 80% only) and averages the
log intervals after the first, which holds start-up and warm-up. The systems take turns: every
round trains each of them once, and a system's figure is its fastest round, so that a slow
spell of a shared machine (which moved one system by 20% between runs done one system after
another) lands on every system alike or on a round that is not kept. MFU = tokens/s x training
FLOPs per token / peak, the peak being the best of a few large matrix products in the training
dtype (fp32; bf16 with --bf16; fp16 with --fp16, --memory-efficient-fp16 or --amp).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import fairseq_smlp
from fairseq_smlp.comparison.flops import model_costs, parse_training_args, vocabulary_size
from fairseq_smlp.comparison.systems import SCALES, SYSTEMS, label_flags
from fairseq_smlp.comparison.train_log import PROGRESS_LINE

USER_DIR = str(Path(fairseq_smlp.__file__).parent)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """FLOP/s of the fastest of ``repeats`` (size x size) @ (size x size) products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):  # the first two warm up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def tokens_per_second(log: str, tokens_per_step: int) -> float:
    """Mean over the log intervals after the first of the tokens processed per second."""
    intervals = [json.loads(m.group(2)) for m in map(PROGRESS_LINE.search, log.splitlines())
                 if m and m.group(1) == "train_inner"]
    if len(intervals) < 2:
        raise RuntimeError("fewer than two log intervals: raise --updates")
    rates = [float(i["wps"]) * tokens_per_step / float(i["wpb"]) for i in intervals[1:]]
    return sum(rates) / len(rates)


def training_flags(data: str, name: str, scale: str, batch_size: int, extra, *own) -> list:
    """fairseq-train's flags for system ``name`` on one device (as the matmul peak is measured),
    as the throughput benchmarks train it: ``own`` flags, then the ``extra`` ones after '--',
    which may override them."""
    return [data, "--user-dir", USER_DIR, *label_flags(name, scale),
            "--sample-break-mode", "none", "--batch-size", str(batch_size),
            "--optimizer", "adam", "--lr", "1e-4", "--num-workers", "0", *own,
            *([] if torch.cuda.is_available() else ["--cpu"]), *extra,
            "--distributed-world-size", "1"]


def split_at_double_dash(argv):
    """This script's flags, and those after '--' for every fairseq-train (e.g. --fp16)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="the systems' sizes (fairseq_smlp/comparison/systems.py)")
    parser.add_argument("--updates", type=int, default=60, help="updates per system")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fairseq-train runs per system, taking turns; the fastest counts")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per update")
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS),
                        help="comma-separated systems to run, or run labels with an expert "
                        "count such as switch_e8 (default: all)")
    parser.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                        help="also write each one's tokens/s there, for the comparison "
                        "report's --throughput")
    own, extra = split_at_double_dash(sys.argv[1:])
    args = parser.parse_args(own)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if {"--bf16", "--memory-efficient-bf16"} & set(extra):
        dtype = torch.bfloat16
    elif {"--fp16", "--memory-efficient-fp16", "--amp"} & set(extra):
        dtype = torch.float16
    else:
        dtype = torch.float32
    peak = matmul_peak(device, dtype, 8192 if cuda else 1024)
    name_of_device = (torch.cuda.get_device_name() if cuda
                      else f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {name_of_device}; {str(dtype).split('.')[-1]} matmul peak "
          f"{peak / 1e12:.2f} TFLOP/s")

    log_interval = max(args.updates // 6, 1)
    names = args.systems.split(",")
    runs, train_flops = {}, {}
    for name in names:
        train_flags = training_flags(
            args.data, name, args.scale, args.batch_size, extra, "--max-update",
            str(args.updates), "--disable-validation", "--no-save", "--log-format", "json",
            "--log-interval", str(log_interval))
        # Parsed as fairseq-train parses them: extra flags may change the model or the update.
        run_args = parse_training_args(train_flags)
        train_flops[name] = model_costs(run_args, vocabulary_size(run_args)).train_flops_per_token
        tokens_per_step = run_args.batch_size * run_args.tokens_per_sample * run_args.update_freq[0]
        runs[name] = ([sys.executable, "-m", "fairseq_cli.train", *train_flags], tokens_per_step)
    rates = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            command, tokens_per_step = runs[name]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"fairseq-train failed for {name}:\n{result.stdout[-3000:]}"
                         f"{result.stderr[-3000:]}")
            rates[name].append(tokens_per_second(result.stdout + result.stderr, tokens_per_step))
            print(f"  round {round_index + 1}, {name}: {rates[name][-1]:,.0f} tokens/s",
                  file=sys.stderr)
    rows = [(name, train_flops[name], max(rates[name])) for name in names]

    dense = dict((n, r) for n, _, r in rows).get("transformer")
    print(f"\nfastest of {args.rounds} round(s), systems taking turns")
    print(f"{'system':<20}{'MFLOPs/token':>14}{'tokens/s':>12}{'x dense':>9}{'TFLOP/s':>9}"
          f"{'MFU':>7}")
    for name, flops, rate in rows:
        ratio = f"{rate / dense:.2f}" if dense else "-"
        achieved = rate * flops
        print(f"{name:<20}{flops / 1e6:>14.1f}{rate:>12,.0f}{ratio:>9}{achieved / 1e12:>9.3f}"
              f"{achieved / peak:>7.1%}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({
            "device": name_of_device, "scale": args.scale, "updates": args.updates,
            "rounds": args.rounds, "extra_flags": extra,
            "tokens_per_second": {name: rate for name, _, rate in rows}}, indent=2) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
