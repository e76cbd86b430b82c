"""The balanced assignment's Triton kernel, run by Triton's interpreter on CPU tensors, against its
twin ``solve`` (the same steps as tensor operators, which test_balanced_assignment.py holds to
the optimum) and against the method's promises. The interpreter takes a few seconds a problem."""

import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, tests/conftest.py has Triton interpret its kernels, on CPU tensors.
pytest.importorskip("triton")
from test_balanced_assignment import optimal_total, skewed_scores  # noqa: E402

from fairseq_smlp.modules.balanced_assignment import solve  # noqa: E402
from fairseq_smlp.modules.balanced_assignment_kernel import assign  # noqa: E402

# Where no expert has room left, the closing round's margin is -inf - -inf, NaN, and read as 0.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernel(scores: torch.Tensor) -> torch.Tensor:
    return assign(scores.to(DEVICE)).cpu()


def total(scores: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    return scores.nan_to_num(0.0, 0.0, 0.0).gather(-1, expert[..., None]).sum((-2, -1))


def test_finds_what_its_twin_finds_on_random_skewed_and_tied_problems():
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(200, 8, generator=generator)
    skewed = torch.randn(200, 8, generator=generator)
    skewed[torch.rand(200, generator=generator) < 0.9, :2] += 3.0
    tied = torch.randint(0, 3, (200, 8), generator=generator).float()
    scores = torch.stack([random, skewed, tied])  # (3, 200, 8): one program each
    expert, twin = kernel(scores), solve(scores)
    for row in range(3):
        assert torch.bincount(expert[row], minlength=8).eq(25).all()
    assert expert.eq(twin).float().mean() >= 0.99
    assert torch.allclose(total(scores, expert), total(scores, twin), rtol=1e-4)


def test_within_half_a_percent_of_the_optimum():
    scores = skewed_scores(256, 16, torch.Generator().manual_seed(1))
    expert = kernel(scores[None])[0]
    best = optimal_total(scores)
    assert best - float(total(scores, expert)) <= 0.005 * abs(best)


def test_places_placeholders_padding_and_non_finite_scores_as_its_twin():
    """E does not divide N (placeholder items fill the spare slots), E is not a power of two
    (padded expert columns), rows of equal scores (padding), NaN and infinite scores."""
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(1, 50, 6, generator=generator)
    scores[0, :10] = 0.0
    scores[0, 10, 2], scores[0, 11, 0], scores[0, 12, 5] = float("nan"), float("inf"), -float("inf")
    expert, twin = kernel(scores), solve(scores)
    assert torch.bincount(expert[0], minlength=6).max() <= 9  # ceil(50 / 6)
    assert torch.equal(expert, twin)


# Builds the kernel as a launch on a GPU would, through Triton's compiler and the ptxas it ships,
# for an H100 (sm_90): no GPU is needed to compile.
COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from fairseq_smlp.modules import balanced_assignment as method
from fairseq_smlp.modules import balanced_assignment_kernel as kernel

pointers = dict(scores_ptr="*fp32", expert_ptr="*i64", owner_ptr="*i32", bid_ptr="*fp32",
                cand_ptr="*i32", value_ptr="*fp32")
sizes = dict(num_items="i32", num_rows="i32", num_experts="i32", capacity="i32")
constants = dict(SINKHORN=method.SINKHORN_ITERATIONS, TEMPERATURE=method.SINKHORN_TEMPERATURE,
                 PRICE=method.PRICE_STEPS, AUCTION=method.AUCTION_ROUNDS, EPS=method.AUCTION_EPS,
                 CLOSING=method.CLOSING_ROUNDS, TIE=method.TIE_BREAK,
                 BLOCK=kernel.BLOCK_ON_DEVICE, E_PAD=16)
signature = {**pointers, **sizes, **{name: "constexpr" for name in constants}}
source = triton.compiler.ASTSource(kernel._assignment_kernel, signature, constants)
print(sorted(triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm))
"""


def test_compiles_for_a_gpu(tmp_path):
    """The interpreter runs what Triton's compiler refuses (globals that are not constexpr, a
    loop-carried variable whose type changes): build it for real."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True,
                            env=dict(env, TRITON_CACHE_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cubin" in result.stdout
