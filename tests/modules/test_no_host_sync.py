"""The training routing path never makes the host wait for the device: on a GPU each read back
(``.item()``, ``.any()`` in an ``if``, ``nonzero``, boolean-mask indexing, ``bincount``) or
copy of Python data into a tensor (``t[i] = 3``) stalls the step until every queued kernel has
run. Checked on CPU by recording every aten operator a training-mode forward and backward calls
and refusing those that need the host to see data, or that make a tensor from Python data."""

import pytest
import torch
from helpers import HostReads, assign_as_on_a_device, pack_experts_on_cpu

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.tmoe import TokenMoE


@pytest.fixture(autouse=True)
def device_assignment(monkeypatch):
    """The CPU auction is for CPU tensors; on a GPU the fixed-work method runs, checked here."""
    assign_as_on_a_device(monkeypatch)


def host_reads(module, x, **inputs):
    module.train()
    with HostReads() as mode:
        module(x, **inputs).float().square().mean().backward()
    return mode.seen


@pytest.mark.parametrize("name,build", [
    ("tmoe", lambda: TokenMoE(16, 32, 4)),
    ("balanced", lambda: MoELayer(BalancedGate(16, 4), BatchedFeedForwardExperts(4, 16, 32), 4)),
    ("top1", lambda: MoELayer(TopKGate(16, 4, 1), BatchedFeedForwardExperts(4, 16, 32), 4)),
    ("top2", lambda: MoELayer(TopKGate(16, 4, 2), BatchedFeedForwardExperts(4, 16, 32), 4)),
])
@pytest.mark.parametrize("packed", [False, True])
def test_training_moe_layer_never_waits(monkeypatch, name, build, packed):
    if packed:
        pack_experts_on_cpu(monkeypatch)
    layer = build()
    x = torch.randn(2, 24, 16, requires_grad=True)
    assert host_reads(layer, x, padding=padding()) == []


def padding():
    """(2, 24): the second sequence 19 tokens long."""
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[1, 19:] = True
    return mask


def test_training_hash_layer_never_waits_with_packed_groups(monkeypatch):
    """Hash routing has no capacity: the padded layout reads the largest load back, the packed
    layout of CUDA bf16 needs nothing from the host."""
    pack_experts_on_cpu(monkeypatch)
    layer = MoELayer(HashGate(50, 4, seed=1), BatchedFeedForwardExperts(4, 16, 32), 4)
    x = torch.randn(2, 24, 16, requires_grad=True)
    assert host_reads(layer, x, token_ids=torch.randint(50, (2, 24)), padding=padding()) == []


def test_training_partial_smoe_never_waits():
    smoe = PartialPredictionSMoE(width=16, num_experts=4, max_positions=12, context_positions=3)
    assert host_reads(smoe, torch.randn(2, 12, 16, requires_grad=True)) == []


@pytest.mark.parametrize("forward", [
    lambda x: x[x > 0].sum(),
    lambda x: x * x.sum().item(),
    lambda x: x.index_fill(0, torch.zeros(1, dtype=torch.long), 0.0) if x.sum() > 0 else x,
    lambda x: torch.cat([x, x.new_zeros(1).index_put_((torch.zeros(1, dtype=torch.long),),
                                                      torch.tensor(2.0))]),
])
def test_the_check_sees_the_host_wait(forward):
    class Waits(torch.nn.Module):
        def forward(self, x):
            return forward(x)

    assert host_reads(Waits(), torch.randn(4, requires_grad=True)) != []
