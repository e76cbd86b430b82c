"""A language-modelling dataset whose batches score only the trailing positions."""

import torch
from fairseq.data import BaseWrapperDataset

from ..partial_prediction import mask_context


class PartialTargetDataset(BaseWrapperDataset):
    """Sets the targets of the first ``context`` positions of every batch to padding, so that any
    criterion ignores them and ``ntokens`` counts scored tokens only, and sets ``start_indices``
    so that fairseq-eval-lm's scorer reads the scored positions alone."""

    def __init__(self, dataset, context: int, pad: int):
        super().__init__(dataset)
        self.context = context
        self.pad = pad

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if len(batch) == 0:
            return batch
        batch["target"] = mask_context(batch["target"], self.context, self.pad)
        batch["ntokens"] = int(batch["target"].ne(self.pad).sum())
        batch["start_indices"] = torch.full(
            (batch["target"].size(0),), self.context, dtype=torch.long
        )
        return batch
