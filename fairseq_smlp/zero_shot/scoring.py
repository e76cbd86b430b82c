"""Batched log-likelihoods of the scored targets of many windows through a fairseq model."""

from dataclasses import dataclass
from typing import List

import torch
from tqdm import tqdm

from .prompt_layout import Window


@dataclass(frozen=True)
class Score:
    log_likelihood: float  # sum over the scored targets, natural log
    tokens: int  # scored targets

    @property
    def per_token(self) -> float:
        return self.log_likelihood / self.tokens


def batch_tensors(windows: List[Window], pad: int):
    """(tokens, targets, scored mask), each (B, L) for the longest window L, padded on the
    right."""
    length = max(len(window.tokens) for window in windows)
    tokens = torch.full((len(windows), length), pad, dtype=torch.long)
    targets = torch.full((len(windows), length), pad, dtype=torch.long)
    scored = torch.zeros((len(windows), length), dtype=torch.bool)
    for row, window in enumerate(windows):
        tokens[row, : len(window.tokens)] = torch.tensor(window.tokens)
        targets[row, : len(window.targets)] = torch.tensor(window.targets)
        scored[row, window.scored.start : window.scored.stop] = True
    return tokens, targets, scored


@torch.no_grad()
def score_windows(model, windows: List[Window], pad: int, batch_size: int, device: torch.device,
                  progress: bool = False, description: str = "") -> List[Score]:
    """One Score per window, in order. Windows of similar length are batched together (longest
    first) and padded on the right; the model runs in eval mode, where every MoE routes each
    token on its own and dropout is off."""
    model.eval()
    order = sorted(range(len(windows)), key=lambda index: -len(windows[index].tokens))
    scores: List[Score] = [None] * len(windows)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=description, unit="batch", disable=not progress):
        tokens, targets, scored = (t.to(device) for t in
                                   batch_tensors([windows[index] for index in batch], pad))
        net_output = model(tokens)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)  # (B, L, V)
        picked = lprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()  # (B, L)
        sums = torch.where(scored, picked, torch.zeros_like(picked)).sum(dim=1)  # (B,)
        for row, index in enumerate(batch):
            scores[index] = Score(sums[row].item(), len(windows[index].scored))
    return scores
