"""Experts spread over gloo ranks compute what one process with all experts computes, and their
gradients come out as fairseq's data-parallel training needs them."""

import pytest
import torch
import torch.distributed as dist
from fairscale.nn.wrap.auto_wrap import ConfigAutoWrap
from helpers import run_on_ranks

from fairseq_smlp.distributed.all_to_all import all_to_all
from fairseq_smlp.distributed.expert_placement import (
    PlacementError,
    check_spreadable,
    expert_placement,
    group_layout,
)
from fairseq_smlp.models.expert_flags import placement_for
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE

D, F, S, VOCAB = 6, 8, 12, 30
L, H, CONTEXT = 7, 8, 2  # sMoE: positions, feature columns, routing context
GATES = {
    "top1": lambda e: TopKGate(D, e, 1, capacity_factor=1.0),
    "top2": lambda e: TopKGate(D, e, 2, capacity_factor=1.0, second_expert_policy="all"),
    "balanced": lambda e: BalancedGate(D, e),
    "hash": lambda e: HashGate(VOCAB, e, seed=5),
}


def check_all_to_all(rank, world):
    # Rank r sends chunk c = [10 r + c]; it must receive [10 c + r] from rank c.
    x = torch.tensor([[10.0 * rank + c] for c in range(world)], requires_grad=True)
    y = all_to_all(x)
    assert y.view(-1).tolist() == [10.0 * c + rank for c in range(world)]
    # d(sum_i w_i y_i)/dx: the weight of the slot each chunk lands in on the other rank.
    weights = torch.tensor([[1.0 + c + 100 * rank] for c in range(world)])
    (y * weights).sum().backward()
    assert x.grad.view(-1).tolist() == [1.0 + rank + 100 * c for c in range(world)]
    # A strided input is exchanged by its logical layout, not its memory order.
    strided = torch.arange(2.0 * world).view(2, world).t() + 10 * rank  # (W, 2)
    assert torch.equal(all_to_all(strided), all_to_all(strided.contiguous()))


def randomized(module):
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()  # away from init symmetries, the same on every rank
    return module


def this_ranks_rows(full: torch.Tensor, local: torch.Tensor, rank: int, world: int):
    """The rows of an expert parameter ``full`` (one per expert) that ``rank`` holds."""
    group_rank = rank % min(world, full.size(0))
    rows = local.size(0)
    return full[group_rank * rows:(group_rank + 1) * rows]


def check_equal_to_one_process(rank, world, build_parallel, build_reference, inputs):
    """``inputs[r]`` are rank r's arguments. Outputs match the single process's; expert
    gradients (after their hook) and averaged shared gradients are the single process's
    gradients of the summed loss divided by the world size, as fairseq's DDP scaling needs."""
    torch.manual_seed(0)
    reference = randomized(build_reference()).train()
    parallel = build_parallel().train()
    full = dict(reference.named_parameters())
    with torch.no_grad():
        for name, parameter in parallel.named_parameters():
            if hasattr(parameter, "expert"):
                parameter.copy_(this_ranks_rows(full[name], parameter, rank, world))
            else:
                parameter.copy_(full[name])
    weights = [torch.randn_like(reference(*args)) for args in inputs]

    out = parallel(*inputs[rank])
    (out * weights[rank]).sum().backward()
    reference.zero_grad()
    sum((reference(*args) * w).sum() for args, w in zip(inputs, weights)).backward()

    torch.testing.assert_close(out, reference(*inputs[rank]), rtol=1e-5, atol=1e-5)
    for name, parameter in parallel.named_parameters():
        want = full[name].grad / world
        if hasattr(parameter, "expert"):
            want = this_ranks_rows(want, parameter, rank, world)
            got = parameter.grad
        else:
            got = parameter.grad.clone()
            dist.all_reduce(got)
            got /= world  # what data-parallel training does to shared weights
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def moe_layer(gate_name, num_experts, parallel):
    def build():
        torch.manual_seed(1)
        placement = expert_placement(num_experts) if parallel else None
        return MoELayer(GATES[gate_name](num_experts),
                        BatchedFeedForwardExperts(num_experts, D, F), num_experts, placement)
    return build


def smoe(kind, num_experts, parallel):
    def build():
        torch.manual_seed(1)
        placement = expert_placement(num_experts) if parallel else None
        if kind == "deterministic":
            smoe = DeterministicSMoE(H, num_experts, L, placement)
            return placement.place(smoe) if parallel else smoe
        return PartialPredictionSMoE(H, num_experts, L, CONTEXT, placement)
    return build


def moe_and_smoe_cases(rank, world, num_experts):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(world, S, D, generator=generator)
    token_ids = torch.randint(VOCAB, (world, S), generator=generator)
    for name in GATES:
        inputs = [(tokens[r], token_ids[r]) for r in range(world)]
        check_equal_to_one_process(rank, world, moe_layer(name, num_experts, True),
                                   moe_layer(name, num_experts, False), inputs)
    # Ranks with different batch sizes and lengths, as at the end of an epoch.
    columns = [(torch.randn(1 + r % 3, L - r % 2, H, generator=generator),) for r in range(world)]
    for kind in ["deterministic", "partial"]:
        check_equal_to_one_process(rank, world, smoe(kind, num_experts, True),
                                   smoe(kind, num_experts, False), columns)


def two_ranks_four_experts(rank, world):
    check_all_to_all(rank, world)
    placement = expert_placement(4)
    assert (placement.group_size, placement.local_experts, placement.num_replicas) == (2, 2, 1)
    assert placement.local_slice == slice(2 * rank, 2 * rank + 2)
    moe_and_smoe_cases(rank, world, num_experts=4)
    ConfigAutoWrap.in_autowrap_context = True  # as fairseq builds models for fully_sharded
    try:
        with pytest.raises(ValueError, match="--moe-expert-count 4 spread over 2 ranks cannot "
                                             "yet be held by --ddp-backend fully_sharded without "
                                             "--use-sharded-state"):
            placement_for("--moe-expert-count", 4)
    finally:
        ConfigAutoWrap.in_autowrap_context = False


def four_ranks_two_experts(rank, world):
    placement = expert_placement(2)
    assert (placement.group_size, placement.local_experts, placement.num_replicas) == (2, 1, 2)
    assert placement.local_slice == slice(rank % 2, rank % 2 + 1)
    moe_and_smoe_cases(rank, world, num_experts=2)


def test_two_ranks_equal_one_process():
    run_on_ranks(two_ranks_four_experts, 2)


def test_replicated_experts_equal_one_process():
    """4 ranks, 2 experts: two all-to-all groups, each expert on two ranks."""
    run_on_ranks(four_ranks_two_experts, 4)


def test_group_layout():
    assert group_layout(4, 2) == [("all_to_all", [0, 1]), ("all_to_all", [2, 3]),
                                  ("replica", [0, 2]), ("replica", [1, 3])]
    assert group_layout(2, 2) == [("all_to_all", [0, 1]), ("replica", [0]), ("replica", [1])]


def test_expert_count_must_split_over_the_ranks():
    check_spreadable(8, 4)
    check_spreadable(2, 4)
    with pytest.raises(PlacementError, match="^6 cannot be spread over 4 ranks: the expert "
                                             "count must be a multiple or a divisor"):
        check_spreadable(6, 4)


def test_a_bad_expert_count_is_refused_in_the_name_of_its_flag():
    with pytest.raises(ValueError, match="^--smoe-expert-count must be at least 1; got 0$"):
        placement_for("--smoe-expert-count", 0)
