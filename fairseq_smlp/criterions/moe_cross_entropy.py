"""moe_cross_entropy: token cross-entropy plus the MoE gate (load-balancing) loss, with each
sparse layer's routing figures in fairseq's logs.

Models report through the extra dict of their output: ``moe_gate_losses``, a list of one scalar
per MoE layer (absent or empty for gates without an auxiliary loss, such as balanced or hash
routing), and ``routing_stats``, a dict of scalar figures named after their layer.

Nothing is read back to the host in a training step: the token count is the batch's own
``ntokens`` (counted by the data loader; partial_prediction_lm's batches count the scored
positions), and the losses and figures stay tensors on the device until fairseq logs them, as
fairseq's own criterions keep theirs.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

# fairseq's MoE language-model recipe weighs the gate loss by 0.01.
DEFAULT_GATE_LOSS_WEIGHT = 0.01
STAT_PREFIX = "routing/"


@dataclass
class MoECrossEntropyConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")
    moe_gate_loss_wt: float = field(
        default=DEFAULT_GATE_LOSS_WEIGHT,
        metadata={"help": "weight of the MoE gate loss added to the cross-entropy"},
    )
    moe_gate_loss_combine_method: ChoiceEnum(["sum", "average"]) = field(
        default="sum", metadata={"help": "how the gate losses of the MoE layers are combined"}
    )


@register_criterion("moe_cross_entropy", dataclass=MoECrossEntropyConfig)
class MoECrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, moe_gate_loss_wt, moe_gate_loss_combine_method):
        super().__init__(task)
        if not 0 <= moe_gate_loss_wt < math.inf:
            raise ValueError(f"--moe-gate-loss-wt must be a finite number >= 0; got "
                             f"{moe_gate_loss_wt}")
        self.sentence_avg = sentence_avg
        self.gate_loss_weight = moe_gate_loss_wt
        self.gate_loss_combine = moe_gate_loss_combine_method

    def scored_targets(self, model, sample, net_output) -> torch.Tensor:
        """(B, L) targets, padding where a position is not scored."""
        return model.get_targets(sample, net_output)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        target = self.scored_targets(model, sample, net_output)
        ntokens = sample["ntokens"]
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        nll_loss = F.nll_loss(
            lprobs.view(-1, lprobs.size(-1)),
            target.reshape(-1),
            ignore_index=self.padding_idx,
            reduction="sum" if reduce else "none",
        )
        sample_size = target.size(0) if self.sentence_avg else ntokens
        extra = net_output[1] if isinstance(net_output[1], dict) else {}
        gate_loss = self.combined_gate_loss(extra.get("moe_gate_losses") or [])
        # The trainer divides by sample_size: scale the per-token gate loss to match.
        loss = nll_loss + self.gate_loss_weight * gate_loss * sample_size
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "gate_loss": gate_loss.detach(),
            "nbatches": 1,
            "ntokens": ntokens,
            "nsentences": target.size(0),
            "sample_size": sample_size,
        }
        for name, value in (extra.get("routing_stats") or {}).items():
            logging_output[STAT_PREFIX + name] = value.detach()
        return loss, sample_size, logging_output

    def combined_gate_loss(self, gate_losses) -> torch.Tensor:
        if not gate_losses:
            return torch.tensor(0.0)
        total = torch.stack([loss.float() for loss in gate_losses]).sum()
        return total / len(gate_losses) if self.gate_loss_combine == "average" else total

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, ntokens, nbatches = total("sample_size"), total("ntokens"), total("nbatches")
        # Base 2, as fairseq reports losses.
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size,
                           round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(ntokens, 1) / math.log(2), ntokens,
                           round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_scalar("gate_loss", total("gate_loss") / max(nbatches, 1), nbatches, round=4)
        stat_keys = {key for log in logging_outputs for key in log if key.startswith(STAT_PREFIX)}
        for key in sorted(stat_keys):
            metrics.log_scalar(key[len(STAT_PREFIX):], total(key) / max(nbatches, 1), nbatches,
                               round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
