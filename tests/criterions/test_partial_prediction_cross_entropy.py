import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import HostReads, make_dictionary

from fairseq_smlp.criterions.moe_cross_entropy import MoECrossEntropyCriterion
from fairseq_smlp.criterions.partial_prediction_cross_entropy import (
    PartialPredictionCrossEntropyCriterion,
)

VOCAB, B, L, CONTEXT = 12, 2, 10, 2


class FixedLogitsModel:
    """Stands in for a model: returns given logits (a leaf, to read gradients) and extras."""

    def __init__(self, logits, extra):
        self.logits, self.extra = logits, extra

    def __call__(self, **net_input):
        return self.logits, self.extra

    def get_normalized_probs(self, net_output, log_probs):
        return F.log_softmax(net_output[0], dim=-1)

    def get_targets(self, sample, net_output):
        return sample["target"]


def make_case(extra=None, scored_from=CONTEXT):
    """A batch as the task's data loader makes it: ``ntokens`` counts the targets that are not
    padding from position ``scored_from`` on (partial_prediction_lm's count; 0 for
    language_modeling)."""
    torch.manual_seed(0)
    dictionary = make_dictionary(VOCAB - 4)
    pad = dictionary.pad()
    target = torch.randint(4, VOCAB, (B, L))
    target[1, 8:] = pad  # a shorter second sequence
    logits = torch.randn(B, L, VOCAB, requires_grad=True)
    ntokens = int(target[:, scored_from:].ne(pad).sum())
    sample = {"net_input": {"src_tokens": target}, "target": target, "ntokens": ntokens}
    task = SimpleNamespace(target_dictionary=dictionary, context=CONTEXT)
    return task, FixedLogitsModel(logits, extra or {}), sample, pad


def hand_nll(logits, target, pad):
    total, count = 0.0, 0
    for b in range(B):
        for t in range(CONTEXT, L):
            if target[b, t] != pad:
                row = logits[b, t].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                total += log_z - row[int(target[b, t])]
                count += 1
    return total, count


def test_loss_is_cross_entropy_over_the_trailing_positions():
    task, model, sample, pad = make_case()
    criterion = PartialPredictionCrossEntropyCriterion(task, False, 0.01, "sum")
    loss, sample_size, log = criterion(model, sample)
    want, count = hand_nll(model.logits, sample["target"], pad)
    assert count == (L - CONTEXT) + (8 - CONTEXT)
    assert sample_size == count and log["ntokens"] == count
    assert math.isclose(float(loss.detach()), want, rel_tol=1e-5)
    assert log["gate_loss"] == 0.0


def test_context_positions_get_no_gradient():
    task, model, sample, _ = make_case()
    loss, _, _ = PartialPredictionCrossEntropyCriterion(task, False, 0.01, "sum")(model, sample)
    loss.backward()
    grad = model.logits.grad
    assert grad[:, :CONTEXT].abs().sum() == 0
    assert grad[0, CONTEXT:].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("method,combined", [("sum", 2.0), ("average", 1.0)])
def test_gate_loss_is_added_with_its_weight(method, combined):
    extra = {"moe_gate_losses": [torch.tensor(0.5), torch.tensor(1.5)],
             "routing_stats": {"layer1.tmoe.load_cv": torch.tensor(0.25)}}
    task, model, sample, pad = make_case(extra)
    loss, sample_size, log = PartialPredictionCrossEntropyCriterion(task, False, 0.1, method)(
        model, sample
    )
    nll, _ = hand_nll(model.logits, sample["target"], pad)
    assert math.isclose(float(loss.detach()), nll + 0.1 * combined * sample_size, rel_tol=1e-5)
    assert log["gate_loss"] == combined
    assert log["routing/layer1.tmoe.load_cv"] == 0.25


def test_moe_cross_entropy_scores_every_position():
    task, model, sample, pad = make_case(scored_from=0)
    loss, sample_size, _ = MoECrossEntropyCriterion(task, False, 0.0, "sum")(model, sample)
    assert sample_size == int(sample["target"].ne(pad).sum())
    want = F.cross_entropy(model.logits.view(-1, VOCAB), sample["target"].view(-1),
                           ignore_index=pad, reduction="sum")
    assert math.isclose(float(loss.detach()), float(want), rel_tol=1e-5)


@pytest.mark.parametrize("criterion", [MoECrossEntropyCriterion,
                                       PartialPredictionCrossEntropyCriterion])
def test_a_training_step_reads_nothing_back_to_the_host(criterion):
    """Counts, losses and figures stay on the device until fairseq logs them."""
    extra = {"moe_gate_losses": [torch.tensor(0.5, requires_grad=True)],
             "routing_stats": {"layer1.tmoe.load_cv": torch.tensor(0.25)}}
    task, model, sample, _ = make_case(extra)
    with HostReads() as reads:
        loss, _, log = criterion(task, False, 0.01, "sum")(model, sample)
        loss.backward()
    assert reads.seen == []
    assert all(isinstance(value, (int, torch.Tensor)) for value in log.values())


def test_needs_the_partial_prediction_task():
    task = SimpleNamespace(target_dictionary=make_dictionary(4))
    with pytest.raises(ValueError, match="--task partial_prediction_lm defines"):
        PartialPredictionCrossEntropyCriterion(task, False, 0.01, "sum")
    with pytest.raises(ValueError, match="--moe-gate-loss-wt must be a finite number >= 0; "
                       "got -1"):
        MoECrossEntropyCriterion(task, False, -1, "sum")


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_a_gate_loss_weight_that_is_not_finite_is_refused(weight):
    """A NaN or infinite weight would make every loss NaN from the first step."""
    task = SimpleNamespace(target_dictionary=make_dictionary(4))
    with pytest.raises(ValueError, match=f"--moe-gate-loss-wt must be a finite number >= 0; "
                       f"got {weight}"):
        MoECrossEntropyCriterion(task, False, float(weight), "sum")
