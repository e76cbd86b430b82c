"""A merged checkpoint loaded by a model whose experts are spread over 2 and 4 ranks (what
--finetune-from-model does): every rank keeps its own rows of each expert parameter, and the
ranks together compute what one process computes."""

import shutil

import pytest
import torch
from fairseq import checkpoint_utils
from helpers import run_on_ranks
from test_checkpoint_fixture import FIXTURE

from fairseq_smlp.checkpoint.expert_state import parallel_experts
from fairseq_smlp.checkpoint.merge import consolidate


def check_rank(rank, world_size, merged):
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(merged)], arg_overrides={"data": str(FIXTURE)})
    model = models[0].eval()
    saved = torch.load(merged, weights_only=False)["model"]
    experts = parallel_experts(model)
    assert experts, "the experts are not spread over the ranks"
    for name, parameter in experts.items():
        placement = parameter.expert_placement
        rows = placement.num_experts // placement.group_size
        first = placement.group_rank * rows
        torch.testing.assert_close(parameter.detach(), saved[name][first:first + rows],
                                   rtol=0, atol=0)
    # Every rank runs the same batch; its experts' tokens come and go over the all-to-all.
    expected = torch.load(FIXTURE / "expected.pt")
    with torch.no_grad():
        logits = model(expected["tokens"])[0].float()
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("world_size", [2, 4])
def test_a_merged_checkpoint_spreads_over_ranks_and_gives_the_single_process_output(
        tmp_path, world_size):
    for rank_file in FIXTURE.glob("checkpoint_best-rank-*.pt"):
        shutil.copy(rank_file, tmp_path)
    merged = tmp_path / "checkpoint_best.pt"
    consolidate(merged, merged)
    run_on_ranks(check_rank, world_size, merged)
