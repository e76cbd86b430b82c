"""Training throughput (tokens/s from fairseq-train's own log) of smlp_deterministic_tiny against
a gmlp_lm of equal active FLOPs per token, on the same prepared data.

    python benchmarks/train_throughput.py DATA_BIN [--updates 200] [--cpu]

Active FLOPs are counted per token, forward, for what the implementation computes: U and V of
every block, the full (T x T) spatial product (the causal mask zeroes half of it but the matrix
product still runs), and for a sparse block the tMoE's centroid scores and one expert FFN.
Embedding, output projection and layer norms are the same for both models and left out.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import fairseq_smlp

USER_DIR = str(Path(fairseq_smlp.__file__).parent)


def gmlp_block_macs(embed_dim: int, ffn_dim: int, context: int) -> int:
    return embed_dim * ffn_dim + (ffn_dim // 2) * embed_dim + context * (ffn_dim // 2)


def sparse_block_macs(embed_dim: int, ffn_dim: int, context: int, tmoe_experts: int) -> int:
    tmoe = tmoe_experts * embed_dim + 2 * embed_dim * ffn_dim
    return gmlp_block_macs(embed_dim, ffn_dim, context) + tmoe


def train_words_per_second(data: str, arch: str, extra, updates: int, device_args) -> float:
    command = [
        sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", USER_DIR,
        "--task", "language_modeling", "--criterion", "moe_cross_entropy", "--arch", arch,
        *extra, "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
        "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(updates),
        "--disable-validation", "--no-save", "--log-format", "simple",
        "--log-interval", str(updates), "--num-workers", "0", *device_args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    summary = [line for line in output.stdout.splitlines() if "| train |" in line][-1]
    return float(re.search(r"wps ([\d.]+)", summary).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    device_args = ["--cpu"] if args.cpu else []

    # smlp_deterministic_tiny: 4 blocks of d_model 128, d_ffn 512, 2 sparse with 4 tMoE experts.
    embed, ffn, context, layers, sparse, experts = 128, 512, 128, 4, 2, 4
    smlp_macs = (layers - sparse) * gmlp_block_macs(embed, ffn, context) + sparse * (
        sparse_block_macs(embed, ffn, context, experts)
    )
    gmlp_layers = round(smlp_macs / gmlp_block_macs(embed, ffn, context))
    gmlp_macs = gmlp_layers * gmlp_block_macs(embed, ffn, context)

    rows = [
        ("smlp_deterministic_tiny", [], smlp_macs),
        (f"gmlp_lm_tiny, {gmlp_layers} layers", ["--decoder-layers", str(gmlp_layers)], gmlp_macs),
    ]
    print(f"{'model':<30}{'MFLOPs/token':>14}{'tokens/s':>12}")
    for label, extra, macs in rows:
        arch = label.split(",")[0]
        wps = train_words_per_second(args.data, arch, extra, args.updates, device_args)
        print(f"{label:<30}{2 * macs / 1e6:>14.2f}{wps:>12.0f}")


if __name__ == "__main__":
    main()
