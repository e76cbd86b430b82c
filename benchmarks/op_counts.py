"""Operators one training step of each routing and mixing layer launches on the path CUDA takes,
counted on CPU tensors (cuda_path.cuda_path_on_cpu(), bf16): on a GPU each is a kernel launch,
and the sparse layers' many small ones are what keeps the GPU waiting for the host. The count is
deterministic, so it holds on any machine; tests/modules/test_op_counts.py holds the budgets
below.

    python benchmarks/op_counts.py [--detail]

A training step is a forward and a backward pass of one layer, ``layer(x).float().square()
.mean().backward()``, after one untimed step; counted are the aten operators the dispatcher
runs below autograd (torch.utils._python_dispatch), leaving out views and the operators that
only allocate or relabel memory (no kernel). What a model computes once a step for all its
routing layers together (the auxiliary losses, gates.load_balancing_losses; the figures for the
logs, routing_figures.py) is not in a layer's count. Where the CPU splits an operator that CUDA
runs as one kernel, the count has the CPU's: a softmax to fp32 of a bf16 input (a copy, then
the softmax; and a copy back in its backward) costs the top-1 and top-2 counts 2 that CUDA does
not launch.
"""

import argparse
import collections
from typing import Callable, Counter, Dict

import torch
import torch.nn.functional as F
from torch import nn
from spatial_mixers import DenseFeedForward
from torch.utils._python_dispatch import TorchDispatchMode

from fairseq_smlp.modules.cuda_path import cuda_path_on_cpu
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection
from fairseq_smlp.modules.tmoe import TokenMoE
from fairseq_smlp.partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length

# Operators that launch no kernel: allocation and aliasing.
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
             "alias", "lift_fresh", "_reshape_alias", "_unsafe_view", "sym_size", "sym_stride",
             "sym_numel"}

# The most operators each layer's training step may launch, held by tests/modules/test_op_counts.py
# so that a change that adds launches fails: today's counts. The balanced assignment is one of
# them (its Triton kernel; without Triton, ~650 operators).
BUDGETS = {
    "dense FFN": 19,
    "dense projection": 19,
    "top-1": 56,
    "top-2": 70,
    "hash": 37,
    "balanced": 56,
    "tMoE E=16": 56,
    "partial sMoE E=16": 51,
    "deterministic sMoE E=16": 21,
}

BATCH, LENGTH, EMBED_DIM, FFN_DIM, EXPERTS, VOCAB = 2, 64, 64, 128, 16, 100
# The token mixers' sequences: T positions, H columns.
MIXER_LENGTH, MIXER_WIDTH = 32, 64


class OperatorCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))


def moe(gate: nn.Module) -> MoELayer:
    return MoELayer(gate, BatchedFeedForwardExperts(EXPERTS, EMBED_DIM, FFN_DIM, F.gelu), EXPERTS)


def layers() -> Dict[str, Callable[[], nn.Module]]:
    """Each layer at a small size (operator counts do not depend on it), E = 16."""
    context = context_length(MIXER_LENGTH, DEFAULT_PREDICTION_FRACTION)
    return {
        "dense FFN": lambda: DenseFeedForward(EMBED_DIM, FFN_DIM),
        "dense projection": lambda: CausalSpatialProjection(1, MIXER_LENGTH),
        "top-1": lambda: moe(TopKGate(EMBED_DIM, EXPERTS, 1)),
        "top-2": lambda: moe(TopKGate(EMBED_DIM, EXPERTS, 2)),
        "hash": lambda: moe(HashGate(VOCAB, EXPERTS, seed=1)),
        "balanced": lambda: moe(BalancedGate(EMBED_DIM, EXPERTS)),
        "tMoE E=16": lambda: TokenMoE(EMBED_DIM, FFN_DIM, EXPERTS),
        "partial sMoE E=16": lambda: PartialPredictionSMoE(MIXER_WIDTH, EXPERTS, MIXER_LENGTH,
                                                           context),
        "deterministic sMoE E=16": lambda: DeterministicSMoE(MIXER_WIDTH, EXPERTS, MIXER_LENGTH),
    }


def training_step_operators(module: nn.Module) -> Counter[str]:
    """The operators, by name, of one bf16 training step of ``module`` on the CUDA path."""
    torch.manual_seed(0)
    module = module.to(torch.bfloat16).train()
    mixer = isinstance(module, (CausalSpatialProjection, PartialPredictionSMoE))
    shape = (BATCH, MIXER_LENGTH, MIXER_WIDTH) if mixer else (BATCH, LENGTH, EMBED_DIM)
    x = torch.randn(*shape, dtype=torch.bfloat16, requires_grad=True)
    inputs = (x,)
    if isinstance(module, MoELayer):
        inputs += (torch.randint(VOCAB, shape[:2]), torch.zeros(shape[:2], dtype=torch.bool))
    with cuda_path_on_cpu():
        for _ in range(2):  # the first step may make what later ones reuse
            module.zero_grad(set_to_none=True)
            x.grad = None
            with OperatorCount() as count:
                module(*inputs).float().square().mean().backward()
    return count.seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detail", action="store_true", help="list each layer's operators")
    args = parser.parse_args()
    for name, build in layers().items():
        seen = training_step_operators(build())
        print(f"{name}: {sum(seen.values())} operators")
        if args.detail:
            print("    " + ", ".join(f"{op} {n}" for op, n in seen.most_common()))


if __name__ == "__main__":
    main()
