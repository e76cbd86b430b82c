"""Each routing region eager and under torch.compile (--compile-routing): the time to compile it
on its first call, and a training step (forward + backward) of each, side by side.

    python benchmarks/compiled_regions.py [--device cuda --dtype bfloat16]

Sizes as moe_layers.py and spatial_mixers.py take them by default; on a GPU the gpu suite gives
the paper's widths.
"""

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from moe_layers import WithTokenIds, add_layer_arguments
from spatial_mixers import time_side_by_side

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.tmoe import TokenMoE
from fairseq_smlp.partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length

VOCAB = 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_layer_arguments(parser, experts=16)
    parser.add_argument("--batch", type=int, default=8, help="sequences of the partial sMoE")
    parser.add_argument("--length", type=int, default=128, help="T of the partial sMoE")
    parser.add_argument("--width", type=int, default=256, help="columns of the partial sMoE")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("filelock").setLevel(logging.WARNING)  # inductor's cache locks
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    dim, experts = args.embed_dim, args.experts
    torch.manual_seed(0)

    def moe(gate, compiled):
        return MoELayer(gate, BatchedFeedForwardExperts(experts, dim, args.ffn_dim, F.relu),
                        experts, compile_routing=compiled)

    context = context_length(args.length, DEFAULT_PREDICTION_FRACTION)
    builds = {
        "top-1": lambda c: moe(TopKGate(dim, experts, 1), c),
        "top-2": lambda c: moe(TopKGate(dim, experts, 2), c),
        "hash": lambda c: WithTokenIds(moe(HashGate(VOCAB, experts, seed=1), c),
                                       torch.randint(VOCAB, (1, args.tokens))),
        "balanced": lambda c: moe(BalancedGate(dim, experts), c),
        f"tMoE E={experts}": lambda c: TokenMoE(dim, args.ffn_dim, experts, compile_routing=c),
        f"partial sMoE E={experts}": lambda c: PartialPredictionSMoE(
            args.width, experts, args.length, context, compile_routing=c),
    }
    cases, compile_seconds = {}, {}
    for name, build in builds.items():
        mixer = name.startswith("partial")
        shape = (args.batch, args.length, args.width) if mixer else (1, args.tokens, dim)
        x = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
        for compiled in (False, True):
            torch.manual_seed(0)
            module = build(compiled).to(device=device, dtype=dtype).train()
            if compiled:  # the first call compiles
                start = time.perf_counter()
                module(x).float().square().mean().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                compile_seconds[name] = time.perf_counter() - start
            cases[(name, compiled)] = (module, x)
    seconds = time_side_by_side(cases, args.repeats)

    print(f"device {device}, {args.dtype}, {experts} experts, forward+backward, fastest of "
          f"{args.repeats}, side by side; compile: the first compiled call")
    print(f"{'region':<26}{'eager ms':>10}{'compiled ms':>13}{'x eager':>9}{'compile s':>11}")
    for name in builds:
        eager, compiled = seconds[(name, False)], seconds[(name, True)]
        print(f"{name:<26}{eager * 1e3:>10.2f}{compiled * 1e3:>13.2f}{compiled / eager:>9.2f}"
              f"{compile_seconds[name]:>11.1f}")


if __name__ == "__main__":
    main()
