"""GPU check of --ddp-backend fully_sharded with experts spread over the GPUs (needs CUDA; the CPU
tests cannot run FSDP's forward and backward).

    python benchmarks/fully_sharded_gpu.py data/sotu/bin [--gpus N] [--experts E] [--updates U]

For smlp_deterministic_tiny, smlp_partial_tiny and transformer_lm_switch_tiny, fairseq-train runs U
updates on N GPUs (default: all) over the same batches with legacy_ddp (the reference),
pytorch_ddp and fully_sharded --use-sharded-state, in fp32, dropout 0, with --clip-norm small
enough to clip, and the losses of every update are compared. The fully_sharded run is also
stopped halfway and resumed from its -shardR files (the resumed updates must repeat the
uninterrupted run), and its last -shardR files are merged into one checkpoint that
fairseq-validate evaluates on one GPU (the loss must be the run's last validation loss). On 1
GPU nothing is spread; on 2 GPUs each holds E/2 experts; --experts 2 on 4 GPUs puts each expert
on two replicas. Exits 1 on a mismatch.
"""

import argparse
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import fairseq_smlp
from fairseq_smlp.checkpoint.merge import consolidate

USER_DIR = str(Path(fairseq_smlp.__file__).parent)
LM = ("language_modeling", "moe_cross_entropy")
ARCHS = {  # arch -> (task, criterion)
    "smlp_deterministic_tiny": LM,
    "smlp_partial_tiny": ("partial_prediction_lm", "partial_prediction_cross_entropy"),
    "transformer_lm_switch_tiny": LM,
}
BACKENDS = {
    "legacy_ddp": ["--ddp-backend", "legacy_ddp"],
    "pytorch_ddp": ["--ddp-backend", "pytorch_ddp"],
    "fully_sharded": ["--ddp-backend", "fully_sharded", "--use-sharded-state"],
}
# Logged losses have 3 decimals; the GPUs sum in different orders under each backend.
TOLERANCE = 2e-3
TOKENS_PER_SAMPLE, BATCH_SIZE = "64", "4"


def train_flags(data, arch, gpus, experts, updates, save_dir):
    task, criterion = ARCHS[arch]
    flags = [
        data, "--user-dir", USER_DIR, "--task", task, "--arch", arch,
        "--criterion", criterion, "--decoder-layers", "2", "--dropout", "0",
        "--tokens-per-sample", TOKENS_PER_SAMPLE, "--sample-break-mode", "none",
        "--batch-size", BATCH_SIZE, "--optimizer", "adam", "--lr", "3e-3", "--clip-norm", "0.1",
        "--max-update", str(updates), "--save-dir", str(save_dir), "--no-epoch-checkpoints",
        "--num-workers", "0", "--seed", "1", "--log-format", "simple", "--log-interval", "1",
        "--distributed-world-size", str(gpus), "--moe-expert-count", str(experts),
    ]
    if arch.startswith("smlp"):
        flags += ["--smoe-expert-count", str(experts)]
    if gpus == 1:
        # fairseq starts torch.distributed for one GPU only when told where; FSDP needs it.
        flags += ["--distributed-init-method", f"tcp://localhost:{free_port()}"]
    return flags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def run_together(commands):
    """Run the commands at once (each is small next to the GPU) and return their outputs in order;
    exit with the output of the first that fails."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    outputs = [process.communicate()[0] for process in processes]
    for command, process, output in zip(commands, processes, outputs):
        if process.returncode != 0:
            sys.exit(f"{' '.join(command[:4])} ... failed:\n{output[-4000:]}")
    return outputs


def run(command):
    return run_together([command])[0]


def train_command(flags):
    return [sys.executable, "-m", "fairseq_cli.train", *flags]


def losses(log):
    """update number -> logged training loss."""
    return {int(update): float(loss) for update, loss in
            re.findall(r"train_inner \| epoch \d+:\s+(\d+) / \d+ loss=([\d.]+)", log)}


def last_valid_loss(log):
    return float(re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)[-1])


def largest_difference(got, want):
    if sorted(got) != sorted(want):
        return float("inf")
    return max(abs(got[update] - want[update]) for update in want)


def report(what, difference):
    verdict = "ok" if difference <= TOLERANCE else "MISMATCH"
    print(f"  {what:<58} max |diff| {difference:.4f}  {verdict}")
    return difference <= TOLERANCE


def check_arch(data, arch, gpus, experts, updates, work):
    def flags(backend, max_update, run_name):
        save_dir = work / arch / run_name
        return train_flags(data, arch, gpus, experts, max_update, save_dir) + BACKENDS[backend]

    print(f"{arch}: {gpus} GPU(s), {experts} experts, {updates} updates")
    half = updates // 2
    # The three backends and the first half of the resumed run are independent: run them at once.
    *outputs, _ = run_together([train_command(flags(backend, updates, backend))
                                for backend in BACKENDS]
                               + [train_command(flags("fully_sharded", half, "resumed"))])
    logs = dict(zip(BACKENDS, outputs))
    reference = losses(logs["legacy_ddp"])
    print("  legacy_ddp losses: " + " ".join(f"{reference[u]:.3f}" for u in sorted(reference)))
    fine = sorted(reference) == list(range(1, updates + 1))
    if not fine:
        print(f"  legacy_ddp logged updates {sorted(reference)} of 1-{updates}: use a larger "
              f"corpus (one epoch must hold them) or fewer --updates")
    for backend in ["pytorch_ddp", "fully_sharded"]:
        fine &= report(f"{backend} against legacy_ddp",
                       largest_difference(losses(logs[backend]), reference))

    resumed = run(train_command(flags("fully_sharded", updates, "resumed")))
    if "Loaded checkpoint" not in resumed:
        print("  fully_sharded did not load its checkpoint when resuming: MISMATCH")
        fine = False
    uninterrupted = losses(logs["fully_sharded"])
    fine &= report(f"fully_sharded resumed at {half}, updates {half + 1}-{updates}",
                   largest_difference(losses(resumed), {u: uninterrupted[u] for u in
                                                        range(half + 1, updates + 1)}))

    save_dir = work / arch / "fully_sharded"
    merged = save_dir / "merged.pt"
    consolidate(save_dir / "checkpoint_last.pt", merged)
    validated = run([sys.executable, "-m", "fairseq_cli.validate", data, "--user-dir", USER_DIR,
                     "--path", str(merged), "--task", ARCHS[arch][0], "--tokens-per-sample",
                     TOKENS_PER_SAMPLE, "--batch-size", BATCH_SIZE, "--num-workers", "0"])
    fine &= report("merged -shardR files, one GPU, against the run's validation",
                   abs(last_valid_loss(validated) - last_valid_loss(logs["fully_sharded"])))
    return fine


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count(),
                        help="GPUs to train on (default: all)")
    parser.add_argument("--experts", type=int, default=4,
                        help="experts of every MoE; a multiple or a divisor of --gpus")
    parser.add_argument("--updates", type=int, default=6, help="updates per run")
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help=f"comma-separated archs to check (default: {','.join(ARCHS)})")
    args = parser.parse_args()
    unknown = sorted(set(args.archs.split(",")) - set(ARCHS))
    if unknown:
        sys.exit(f"--archs {args.archs}: {', '.join(unknown)} not among the archs this check "
                 f"knows ({', '.join(ARCHS)})")
    if not 1 <= args.gpus <= torch.cuda.device_count():
        sys.exit(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA "
                 f"device(s); the check needs at least one")
    with tempfile.TemporaryDirectory() as work:
        results = [check_arch(args.data, arch, args.gpus, args.experts, args.updates, Path(work))
                   for arch in args.archs.split(",")]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
