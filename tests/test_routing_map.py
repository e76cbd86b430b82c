"""The counts behind the routing picture, against a routing made by hand."""

import pytest
import torch
from torch import nn

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import GateDecision
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.routing_map import ExpertCounts, main, plot, routing_counts


class FixedGate(nn.Module):
    """Sends token s to expert EXPERTS[s], with a capacity of 2 tokens an expert."""

    EXPERTS = [0, 0, 0, 1, 2, 0]

    def forward(self, tokens, token_ids=None, padding=None):
        expert = torch.tensor(self.EXPERTS)[:, None]
        return GateDecision(expert, torch.ones(expert.shape), capacity=2)


def test_counts_are_the_tokens_and_columns_each_expert_took(tmp_path):
    moe = MoELayer(FixedGate(), BatchedFeedForwardExperts(4, 8, 16), 4).train()
    moe(torch.randn(6, 8))
    smoe = PartialPredictionSMoE(width=8, num_experts=2, max_positions=6, context_positions=2)
    smoe(torch.randn(3, 6, 8))
    counts = routing_counts([nn.ModuleList([moe]), nn.ModuleList([smoe])])
    # Expert 0 is chosen by tokens 0, 1, 2 and 5 and holds two; experts 1 and 2 take one each.
    # Balanced feature routing: 3 sequences x 8 columns, half to each expert.
    assert counts == [ExpertCounts("layer0.moe", "tokens", [2, 1, 1, 0], 2),
                      ExpertCounts("layer1.smoe", "feature columns", [12, 12], 0)]
    assert counts[0].dropped_share == 2 / 6
    plot(counts, "hand-made", tmp_path / "routing.png")
    assert (tmp_path / "routing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def inputs(tmp_path):
    """A checkpoint file and a data directory with its dict.txt, as far as the checks look."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dict.txt").write_text("w 1\n")
    (tmp_path / "checkpoint_best.pt").write_bytes(b"checkpoint")
    return tmp_path


@pytest.mark.parametrize("change,message", [
    (dict(batch_size="0"), "--batch-size must be at least 1; got 0"),
    (dict(batch_size="-3"), "--batch-size must be at least 1; got -3"),
    (dict(subset=""), "--subset must name a split of DATA_BIN (train, valid, test, ...); got ''"),
    (dict(checkpoint="."), "CHECKPOINT {d} is a directory; give a checkpoint file, e.g. "
     "{d}/checkpoint_best.pt"),
    (dict(data="missing"), "DATA_BIN {d}/missing is not a directory; give the binarized data "
     "directory the checkpoint was trained on (fairseq-preprocess's output, with its dict.txt)"),
    (dict(data="checkpoint_best.pt"), "DATA_BIN {d}/checkpoint_best.pt is not a directory"),
    (dict(data="."), "DATA_BIN {d} holds no dict.txt"),
    (dict(out="."), "--out {d} is a directory; give a file name, e.g. {d}/routing.png"),
    (dict(out="routing"), "--out {d}/routing must end in the extension of a picture format, e.g. "
     ".png; valid: .eps, .jpeg,"),
    (dict(out="checkpoint_best.pt"), "--out {d}/checkpoint_best.pt must end in the extension"),
    (dict(out="pictures/routing.png"), "--out {d}/pictures/routing.png: there is no directory "
     "{d}/pictures to write it in"),
])
def test_bad_values_are_refused_before_anything_loads_or_is_written(inputs, capsys, change,
                                                                     message):
    values = {**dict(checkpoint="checkpoint_best.pt", data="bin", out="routing.png",
                     batch_size="4", subset="valid"), **change}
    before = sorted(path.name for path in inputs.rglob("*"))
    with pytest.raises(SystemExit) as exit:
        main([str(inputs / values["checkpoint"]), str(inputs / values["data"]),
              "--out", str(inputs / values["out"]), "--subset", values["subset"],
              "--batch-size", values["batch_size"]])
    assert exit.value.code == 2
    assert f"routing_map: error: {message.format(d=inputs)}" in capsys.readouterr().err
    assert sorted(path.name for path in inputs.rglob("*")) == before
    assert (inputs / "checkpoint_best.pt").read_bytes() == b"checkpoint"
