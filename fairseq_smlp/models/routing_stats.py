"""The routing figures of a decoder's layers, one naming scheme for every model's logs:
``layer{i}.{module}.{figure}``, with ``i`` the decoder layer (0-based), ``module`` the routing
module's ``stats_name`` (``smoe`` and ``tmoe`` in sMLP's sparse blocks, ``moe`` in the Transformer
baselines) and ``figure`` what it measured in its last forward (docs/models.md lists them)."""

from typing import Dict, Iterable

import torch
from torch import nn


def routing_stats(layers: Iterable[nn.Module]) -> Dict[str, torch.Tensor]:
    stats = {}
    for index, layer in enumerate(layers):
        for module in layer.modules():
            name = getattr(module, "stats_name", None)
            if name is not None:
                for figure, value in module.stats.items():
                    stats[f"layer{index}.{name}.{figure}"] = value
    return stats
