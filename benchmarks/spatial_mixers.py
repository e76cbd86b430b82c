"""Forward + backward time of the sMoE token mixers against a dense gMLP spatial projection of the
same width, and of the tMoE against a dense FFN, on the same inputs.

    python benchmarks/spatial_mixers.py [--device cuda] [--batch 8 --length 512 --width 1024]

Target (deterministic sMoE): within 1.2x of the dense projection at any expert count.
"""

import argparse
import functools
import time
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection
from fairseq_smlp.modules.tmoe import TokenMoE
from fairseq_smlp.partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length


def time_in_turns(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 3,
                  cuda: bool = False) -> Dict[str, float]:
    """Seconds of each step, the fastest of ``repeats`` after ``warmup`` untimed calls. The steps
    take turns, one call each per round, so that a slow spell of a shared machine (which moved
    one module's median by 20-30% between runs here) falls on all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def time_side_by_side(cases: Dict[str, Tuple[nn.Module, torch.Tensor]],
                      repeats: int) -> Dict[str, float]:
    """Seconds of one forward + backward pass of each (module, input), timed in turns."""

    def step(module, x):
        module.zero_grad(set_to_none=True)
        module(x).float().square().mean().backward()

    steps = {name: functools.partial(step, module, x) for name, (module, x) in cases.items()}
    cuda = any(x.is_cuda for _, x in cases.values())
    return time_in_turns(steps, repeats, cuda=cuda)


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

    def case(module, width):
        x = torch.randn(args.batch, length, width, device=device, dtype=dtype, requires_grad=True)
        return module.to(device=device, dtype=dtype), x

    ffn_dim = 2 * args.width
    cases = {"dense SGU projection": case(CausalSpatialProjection(1, length), args.width)}
    for experts in args.experts:
        cases[f"deterministic sMoE E={experts}"] = case(
            DeterministicSMoE(args.width, experts, length), args.width)
        cases[f"partial sMoE E={experts}"] = case(
            PartialPredictionSMoE(args.width, experts, length, context), args.width)
    cases["dense FFN"] = case(DenseFeedForward(args.embed_dim, ffn_dim), args.embed_dim)
    for experts in args.experts:
        for mode in ["train", "eval"]:
            module = TokenMoE(args.embed_dim, ffn_dim, experts).train(mode == "train")
            cases[f"tMoE E={experts} ({mode})"] = case(module, args.embed_dim)
    seconds = time_side_by_side(cases, args.repeats)

    print(f"device {device}, {args.dtype}, batch {args.batch}, length {length}, "
          f"width {args.width}, forward+backward, fastest of {args.repeats}, side by side")
    print(f"{'module':<34}{'ms':>10}{'x dense':>10}")
    for name, value in seconds.items():
        dense = seconds["dense FFN" if name.startswith(("dense FFN", "tMoE")) else
                        "dense SGU projection"]
        print(f"{name:<34}{value * 1e3:>10.2f}{value / dense:>10.2f}")

if __name__ == "__main__":
    main()
