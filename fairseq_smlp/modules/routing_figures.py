"""The routing figures of fairseq's logs, computed once a step for every routing module together.

A routing module's forward records what its figures need, as tensors left on the device (the
per-expert loads, the gate's probabilities); ``reduce_figures`` stacks the records of one kind
and shape from all modules and computes their figures in one go, so that a step launches the
same few operators for the logs however many routing layers the model has.
"""

from collections import defaultdict
from typing import Dict, Mapping, NamedTuple, Optional, Union

import torch


class Balance(NamedTuple):
    """load_cv: the coefficient of variation (std / mean) of per-expert counts, 0 = balanced,
    of ``load`` capped at ``capacity`` (the choices each expert kept) where one is given."""

    load: torch.Tensor  # (E,) float
    capacity: Optional[int] = None


class Dropped(NamedTuple):
    """dropped: the fraction of the choices experts received that were over ``capacity``."""

    load: torch.Tensor  # (E,) float
    capacity: Optional[int] = None


class MeanEntropy(NamedTuple):
    """gate_entropy: the mean entropy of the gate's distributions over the tokens that are not
    padding."""

    probs: torch.Tensor  # (S, E) float, detached
    padding: Optional[torch.Tensor] = None  # (S,) bool


Record = Union[Balance, Dropped, MeanEntropy, torch.Tensor]


def reduce_figures(records: Mapping[str, Record]) -> Dict[str, torch.Tensor]:
    """Figure name -> its 0-d tensor, for records of any modules; a tensor is a figure as it
    is."""
    figures: Dict[str, torch.Tensor] = {}
    groups = defaultdict(list)
    for name, record in records.items():
        if isinstance(record, torch.Tensor):
            figures[name] = record
        else:
            groups[_group(record)].append(name)
    for (kind, *_), names in groups.items():
        values = _REDUCERS[kind]([records[name] for name in names])  # (L,)
        figures.update(zip(names, values.unbind(0)))
    return figures


def _group(record) -> tuple:
    """Records stack together when of one kind, with tensors of one shape and the same other
    fields (capacity, whether padding was given)."""
    return (type(record),) + tuple(part.shape if isinstance(part, torch.Tensor) else part
                                   for part in record)


def _capped(records) -> torch.Tensor:
    """(L, E) the loads of ``records`` (one capacity), capped at it."""
    load = torch.stack([record.load for record in records])
    capacity = records[0].capacity
    return load if capacity is None else load.clamp_max(capacity)


def _balance(records) -> torch.Tensor:
    std, mean = torch.std_mean(_capped(records), dim=1, correction=0)
    return std / mean.clamp_min(1e-9)


def _dropped(records) -> torch.Tensor:
    if records[0].capacity is None:
        return records[0].load.new_zeros(len(records))
    load = torch.stack([record.load for record in records])  # (L, E)
    return 1.0 - load.clamp_max(records[0].capacity).sum(1) / load.sum(1).clamp_min(1)


def _mean_entropy(records) -> torch.Tensor:
    entropy = torch.special.entr(torch.stack([record.probs for record in records])).sum(2)
    if records[0].padding is None:
        return entropy.mean(1)  # (L,)
    real = torch.stack([record.padding for record in records]).logical_not()  # (L, S)
    return (entropy * real).sum(1) / real.sum(1).clamp_min(1)


_REDUCERS = {Balance: _balance, Dropped: _dropped, MeanEntropy: _mean_entropy}
