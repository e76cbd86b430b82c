"""The training routing path never reads a value back to the host: on a GPU each such read
(``.item()``, ``.any()`` in an ``if``, ``nonzero``, boolean-mask indexing, ``bincount``) stalls
the step until every queued kernel has run. Checked on CPU by recording every aten operator a
training-mode forward and backward calls and refusing those that need the host to see data."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.tmoe import TokenMoE

# aten operators whose result the host must see (a scalar it reads, or an output whose size
# depends on the data).
HOST_READS = {
    "_local_scalar_dense", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
    "bincount", "unique", "_unique2", "unique_consecutive", "unique_dim", "item",
    "repeat_interleave", "equal",
}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS or (name == "index" and any(
                t is not None and t.dtype == torch.bool for t in args[1])):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def host_reads(module, x):
    module.train()
    with HostReads() as mode:
        module(x).float().square().mean().backward()
    return mode.seen


@pytest.mark.parametrize("name,build", [
    ("tmoe", lambda: TokenMoE(16, 32, 4)),
    ("balanced", lambda: MoELayer(BalancedGate(16, 4), BatchedFeedForwardExperts(4, 16, 32), 4)),
    ("top1", lambda: MoELayer(TopKGate(16, 4, 1), BatchedFeedForwardExperts(4, 16, 32), 4)),
    ("top2", lambda: MoELayer(TopKGate(16, 4, 2), BatchedFeedForwardExperts(4, 16, 32), 4)),
])
def test_training_moe_layer_never_reads_back(name, build):
    assert host_reads(build(), torch.randn(2, 24, 16, requires_grad=True)) == []


def test_training_partial_smoe_never_reads_back():
    smoe = PartialPredictionSMoE(width=16, num_experts=4, max_positions=12, context_positions=3)
    assert host_reads(smoe, torch.randn(2, 12, 16, requires_grad=True)) == []


def test_the_check_sees_a_host_read():
    class Reads(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].sum() + x.sum().item()

    assert host_reads(Reads(), torch.randn(4, requires_grad=True)) != []
