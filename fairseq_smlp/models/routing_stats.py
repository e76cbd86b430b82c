"""The routing figures of a decoder's layers, one naming scheme for every model's logs:
``layer{i}.{module}.{figure}``, with ``i`` the decoder layer (0-based), ``module`` the routing
module's ``stats_name`` (``smoe`` and ``tmoe`` in sMLP's sparse blocks, ``moe`` in the Transformer
baselines) and ``figure`` what it measured in its last forward (docs/models.md lists them),
computed for all modules at once (modules/routing_figures.py)."""

from typing import Dict, Iterable, Iterator, Tuple

import torch
from torch import nn

from ..modules.routing_figures import reduce_figures


def routing_modules(layers: Iterable[nn.Module]) -> Iterator[Tuple[str, nn.Module]]:
    """(``layer{i}.{module}``, module) for every routing module of the decoder's layers."""
    for index, layer in enumerate(layers):
        for module in layer.modules():
            name = getattr(module, "stats_name", None)
            if name is not None:
                yield f"layer{index}.{name}", module


def routing_stats(layers: Iterable[nn.Module]) -> Dict[str, torch.Tensor]:
    return reduce_figures({f"{name}.{figure}": record for name, module in routing_modules(layers)
                           for figure, record in module.stats.items()})
