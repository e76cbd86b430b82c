"""partial_prediction_cross_entropy: moe_cross_entropy over the trailing positions only.

The scored share is --prediction-fraction of --task partial_prediction_lm (the paper's 80%); the
leading context positions contribute no loss and are not counted in ntokens or sample_size.
"""

from dataclasses import dataclass

from fairseq.criterions import register_criterion

from ..partial_prediction import mask_context
from .moe_cross_entropy import MoECrossEntropyConfig, MoECrossEntropyCriterion


@dataclass
class PartialPredictionCrossEntropyConfig(MoECrossEntropyConfig):
    pass


@register_criterion(
    "partial_prediction_cross_entropy", dataclass=PartialPredictionCrossEntropyConfig
)
class PartialPredictionCrossEntropyCriterion(MoECrossEntropyCriterion):
    def __init__(self, task, sentence_avg, moe_gate_loss_wt, moe_gate_loss_combine_method):
        super().__init__(task, sentence_avg, moe_gate_loss_wt, moe_gate_loss_combine_method)
        self.context = getattr(task, "context", None)
        if self.context is None:
            raise ValueError(
                f"--criterion partial_prediction_cross_entropy scores the share of each sequence "
                f"that --task partial_prediction_lm defines (its --prediction-fraction); got "
                f"--task {type(task).__name__}"
            )

    def scored_targets(self, model, sample, net_output):
        return mask_context(model.get_targets(sample, net_output), self.context, self.padding_idx)
