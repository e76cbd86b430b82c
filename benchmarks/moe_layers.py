"""Forward + backward time of each MoE layer (top-2, top-1, balanced, hash; E experts, capacity
factor 1) against a dense FFN with the same active FLOPs per token, on the same inputs.

    python benchmarks/moe_layers.py [--device cuda] [--tokens 8192 --embed-dim 1024]

Top-2 runs two experts per token, so its dense counterpart is twice as wide. Target: within 1.5x.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from spatial_mixers import DenseFeedForward, time_side_by_side

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer

VOCAB = 1000


class WithTokenIds(nn.Module):
    """A hash-routed MoE layer called as ``module(x)``, routing on fixed token ids."""

    def __init__(self, layer: MoELayer, token_ids: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("token_ids", token_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.token_ids)


def add_layer_arguments(parser: argparse.ArgumentParser, experts: int) -> None:
    """Device, dtype and the MoE layers' sizes, shared with compiled_regions.py."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch, S")
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--experts", type=int, default=experts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_layer_arguments(parser, experts=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    dim, ffn, experts = args.embed_dim, args.ffn_dim, args.experts
    x = torch.randn(1, args.tokens, dim, device=device, dtype=dtype, requires_grad=True)
    token_ids = torch.randint(VOCAB, (1, args.tokens), device=device)

    def moe(gate):
        return MoELayer(gate, BatchedFeedForwardExperts(experts, dim, ffn, F.relu), experts)

    layers = {  # name -> (module, its dense counterpart)
        "dense FFN": (DenseFeedForward(dim, ffn), "dense FFN"),
        "dense FFN, twice as wide": (DenseFeedForward(dim, 2 * ffn), "dense FFN, twice as wide"),
        "top-2 (GShard)": (moe(TopKGate(dim, experts, 2, 1.0, "all")), "dense FFN, twice as wide"),
        "top-1 (Switch)": (moe(TopKGate(dim, experts, 1, 1.0)), "dense FFN"),
        "balanced (BASE)": (moe(BalancedGate(dim, experts)), "dense FFN"),
        "hash": (WithTokenIds(moe(HashGate(VOCAB, experts, seed=1)), token_ids), "dense FFN"),
    }
    seconds = time_side_by_side(
        {name: (module.to(device=device, dtype=dtype), x) for name, (module, _) in layers.items()},
        args.repeats)

    print(f"device {device}, {args.dtype}, {args.tokens} tokens, d_model {dim}, d_ffn {ffn}, "
          f"{experts} experts, forward+backward, fastest of {args.repeats}, side by side")
    print(f"{'layer':<26}{'ms':>10}{'x dense':>10}")
    for name, (_, dense) in layers.items():
        print(f"{name:<26}{seconds[name] * 1e3:>10.2f}{seconds[name] / seconds[dense]:>10.2f}")

if __name__ == "__main__":
    main()
