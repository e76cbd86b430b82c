"""Forward + backward time of the sMoE token mixers against a dense gMLP spatial projection of the
same width, and of the tMoE against a dense FFN, on the same inputs.

    python benchmarks/spatial_mixers.py [--device cuda] [--batch 8 --length 512 --width 1024]

Target (deterministic sMoE): within 1.2x of the dense projection at any expert count.
"""

import argparse
import time

import torch
from torch import nn

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection
from fairseq_smlp.modules.tmoe import TokenMoE
from fairseq_smlp.partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length


def time_forward_backward(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` forward + backward passes: on a shared machine the
    slower runs measure the neighbours, which moved medians by 20-30% between runs here."""

    def step():
        module.zero_grad(set_to_none=True)
        module(x).float().square().mean().backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


class DenseFeedForward(nn.Module):
    """One FFN over (B, L, D), the dense counterpart of a tMoE with one active expert."""

    def __init__(self, embed_dim: int, ffn_dim: int):
        super().__init__()
        self.ffn = BatchedFeedForwardExperts(1, embed_dim, ffn_dim)

    def forward(self, x):
        return self.ffn(x.reshape(1, -1, x.size(-1))).view_as(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="T, the context")
    parser.add_argument("--width", type=int, default=256, help="channels the mixer sees (d_ffn/2)")
    parser.add_argument("--embed-dim", type=int, default=128, help="d_model, for the tMoE rows")
    parser.add_argument("--experts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    length = args.length
    context = context_length(length, DEFAULT_PREDICTION_FRACTION)

    def measure(module, width):
        module = module.to(device=device, dtype=dtype)
        x = torch.randn(args.batch, length, width, device=device, dtype=dtype, requires_grad=True)
        return time_forward_backward(module, x, args.repeats)

    print(f"device {device}, {args.dtype}, batch {args.batch}, length {length}, "
          f"width {args.width}, forward+backward, fastest of {args.repeats}")
    print(f"{'module':<34}{'ms':>10}{'x dense':>10}")
    dense = measure(CausalSpatialProjection(1, length), args.width)
    print(f"{'dense SGU projection':<34}{dense * 1e3:>10.2f}{1.0:>10.2f}")
    for experts in args.experts:
        for name, module in [
            ("deterministic sMoE", DeterministicSMoE(args.width, experts, length)),
            ("partial sMoE", PartialPredictionSMoE(args.width, experts, length, context)),
        ]:
            seconds = measure(module, args.width)
            print(f"{f'{name} E={experts}':<34}{seconds * 1e3:>10.2f}{seconds / dense:>10.2f}")

    ffn_dim = 2 * args.width
    dense_ffn = measure(DenseFeedForward(args.embed_dim, ffn_dim), args.embed_dim)
    print(f"{'dense FFN':<34}{dense_ffn * 1e3:>10.2f}{1.0:>10.2f}")
    for experts in args.experts:
        for mode in ["train", "eval"]:
            module = TokenMoE(args.embed_dim, ffn_dim, experts).train(mode == "train")
            seconds = measure(module, args.embed_dim)
            label = f"tMoE E={experts} ({mode})"
            print(f"{label:<34}{seconds * 1e3:>10.2f}{seconds / dense_ffn:>10.2f}")


if __name__ == "__main__":
    main()
