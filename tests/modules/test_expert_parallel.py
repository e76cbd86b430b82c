"""Experts spread over 2 gloo ranks compute what one process with all experts computes."""

import copy
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairseq_smlp.modules.all_to_all import all_to_all
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer

WORLD, E, D, F, S, VOCAB = 2, 4, 6, 8, 12, 30
GATES = {
    "top1": lambda: TopKGate(D, E, 1, capacity_factor=1.0),
    "top2": lambda: TopKGate(D, E, 2, capacity_factor=1.0, second_expert_policy="all"),
    "balanced": lambda: BalancedGate(D, E),
    "hash": lambda: HashGate(VOCAB, E, seed=5),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_all_to_all(rank):
    # Rank r sends chunk c = [10 r + c]; it must receive [10 c + r] from rank c.
    x = torch.tensor([[10.0 * rank + c] for c in range(WORLD)], requires_grad=True)
    y = all_to_all(x)
    assert y.view(-1).tolist() == [10.0 * c + rank for c in range(WORLD)]
    # d(sum_i w_i y_i)/dx: the weight of the slot each chunk lands in on the other rank.
    weights = torch.tensor([[1.0 + c + 100 * rank] for c in range(WORLD)])
    (y * weights).sum().backward()
    assert x.grad.view(-1).tolist() == [1.0 + rank + 100 * c for c in range(WORLD)]


def check_gate(rank, name):
    torch.manual_seed(0)
    reference = MoELayer(GATES[name](), BatchedFeedForwardExperts(E, D, F), E).train()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()  # away from init symmetries, the same on every rank
    local = BatchedFeedForwardExperts(E // WORLD, D, F)
    mine = slice(rank * E // WORLD, (rank + 1) * E // WORLD)
    with torch.no_grad():
        for name_, parameter in local.named_parameters():
            parameter.copy_(getattr(reference.experts, name_)[mine])
    parallel = MoELayer(copy.deepcopy(reference.gate), local, E, expert_group=dist.group.WORLD)
    parallel.train()

    tokens = torch.randn(WORLD, S, D)  # the global batch, one slice per rank
    token_ids = torch.randint(VOCAB, (WORLD, S))
    weights = torch.randn(WORLD, S, D)
    out = parallel(tokens[rank], token_ids[rank])
    (out * weights[rank]).sum().backward()

    want = [reference(tokens[r], token_ids[r]) for r in range(WORLD)]
    sum((w * weights[r]).sum() for r, w in enumerate(want)).backward()
    torch.testing.assert_close(out, want[rank], rtol=1e-5, atol=1e-5)
    for name_, parameter in local.named_parameters():
        torch.testing.assert_close(parameter.grad, getattr(reference.experts, name_).grad[mine],
                                   rtol=1e-5, atol=1e-5)
    for parameter, expected in zip(parallel.gate.parameters(), reference.gate.parameters()):
        dist.all_reduce(parameter.grad)  # what data-parallel training does to shared weights
        torch.testing.assert_close(parameter.grad, expected.grad, rtol=1e-5, atol=1e-5)


def worker(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        check_all_to_all(rank)
        for name in GATES:
            check_gate(rank, name)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process():
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)


def test_expert_count_must_split_over_the_ranks(monkeypatch):
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    with pytest.raises(ValueError, match="--moe-expert-count 4 must be a multiple of the 3 ranks"):
        MoELayer(TopKGate(D, E, 1), BatchedFeedForwardExperts(E, D, F), E, expert_group=object())
