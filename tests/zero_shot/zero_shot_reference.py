"""Independent references for the zero-shot tests: log-likelihoods gathered by hand from one
forward pass of the model, and a rigged language model whose right answers are known."""

from typing import Dict, List, Set, Tuple

import torch
from torch import nn


def direct_log_likelihood(model, context: List[int], continuation: List[int], pad: int = 1,
                          scored_from: int = 0) -> float:
    """sum_i log p(continuation[i] | everything before it), from log_softmax of the model's logits
    on the sequence, preceded by as many padding ids as put the prediction of continuation[0]
    at position ``scored_from`` if the context is too short for that."""
    ids = context + continuation
    offset = max(0, scored_from + 1 - len(context))
    inputs = [pad] * offset + ids[:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inputs]))[0][0]  # (L, V)
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    total = 0.0
    for index in range(len(context), len(ids)):
        position = offset + index - 1  # where ids[index] is predicted
        assert position >= scored_from
        total += lprobs[position, ids[index]].item()
    return total


class RiggedLM(nn.Module):
    """A causal stub LM that knows the right texts: after any prefix of a right candidate's token
    sequence it gives that sequence's next token the logit ``bias`` (all others 0). A large
    positive bias makes the right candidates the likeliest, a large negative one the least
    likely. Right-padding is never read: position t sees tokens[: t + 1] only."""

    def __init__(self, right_sequences: List[List[int]], vocab_size: int, bias: float,
                 max_positions: int = 512):
        super().__init__()
        self.vocab_size, self.bias, self.length = vocab_size, bias, max_positions
        self.next_tokens: Dict[Tuple[int, ...], Set[int]] = {}
        for sequence in right_sequences:
            for end in range(1, len(sequence)):
                self.next_tokens.setdefault(tuple(sequence[:end]), set()).add(sequence[end])

    def forward(self, tokens: torch.Tensor):
        batch, length = tokens.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        for row in range(batch):
            for position in range(length):
                favoured = self.next_tokens.get(tuple(tokens[row, : position + 1].tolist()), ())
                logits[row, position, list(favoured)] = self.bias
        return logits, {}

    def get_normalized_probs(self, net_output, log_probs: bool):
        assert log_probs
        return torch.log_softmax(net_output[0], dim=-1)

    def max_positions(self) -> int:
        return self.length
