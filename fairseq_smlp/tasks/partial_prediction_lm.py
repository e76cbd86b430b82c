"""partial_prediction_lm: language modelling that scores only the trailing share of each sequence.

Everything fairseq computes from a batch's targets follows: training and validation losses,
``ntokens``, and the perplexity of fairseq-eval-lm, which reads ``start_indices``.
"""

import logging
from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from ..data.partial_target_dataset import PartialTargetDataset
from ..partial_prediction import DEFAULT_PREDICTION_FRACTION, context_length

logger = logging.getLogger(__name__)


@dataclass
class PartialPredictionLMConfig(LanguageModelingConfig):
    prediction_fraction: float = field(
        default=DEFAULT_PREDICTION_FRACTION,
        metadata={
            "help": "share of each --tokens-per-sample block that is predicted and scored; the "
            "leading rest is context only (smlp_partial routes on it)"
        },
    )


@register_task("partial_prediction_lm", dataclass=PartialPredictionLMConfig)
class PartialPredictionLMTask(LanguageModelingTask):
    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        if getattr(args, "add_bos_token", False):
            raise ValueError(
                "--add-bos-token cannot be combined with --task partial_prediction_lm: the "
                "leading beginning-of-sentence token would move every block's context and "
                "scored positions by one; leave it out")
        super().__init__(args, dictionary, output_dictionary, targets=targets)
        self.context = context_length(args.tokens_per_sample, args.prediction_fraction)

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.datasets[split] = PartialTargetDataset(
            self.datasets[split], self.context, self.source_dictionary.pad()
        )
        logger.info(
            f"partial prediction on '{split}': positions {self.context} to "
            f"{self.args.tokens_per_sample - 1} of every {self.args.tokens_per_sample}-token "
            f"block are scored (--prediction-fraction {self.args.prediction_fraction}); losses, "
            f"token counts and perplexities cover those positions only"
        )

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """The batches of the hub's ``score`` and ``generate`` and of fairseq-interactive: their
        targets lose the context positions too, so a score covers the positions from
        ``context`` on (whose routing read only their past) and nothing before; an input no
        longer than the context has nothing scored."""
        dataset = super().build_dataset_for_inference(src_tokens, src_lengths, **kwargs)
        return PartialTargetDataset(dataset, self.context, self.source_dictionary.pad())

    def eval_lm_dataloader(self, dataset, *args, context_window: int = 0, **kwargs):
        if context_window > 0:
            raise ValueError(
                f"--context-window {context_window} cannot be combined with --task "
                f"partial_prediction_lm: the window would shift the scored positions; evaluate "
                f"whole blocks (each already keeps its first {self.context} positions as context)"
            )
        return super().eval_lm_dataloader(dataset, *args, context_window=context_window, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """fairseq-generate's --prefix-size takes each prompt from the target, which this task
        pads over the context positions; such a prompt is read from the source instead, which
        the target runs one position ahead of."""
        if prefix_tokens is not None and prefix_tokens.eq(self.source_dictionary.pad()).any():
            source = sample["net_input"]["src_tokens"]  # (B, T)
            prefix_tokens = source[:, 1:1 + prefix_tokens.size(1)]
        return super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                      constraints=constraints)
