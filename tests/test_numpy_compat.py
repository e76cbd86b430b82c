"""fairseq's --sample-break-mode eos blocks under the NumPy 2 the install brings."""

import numpy as np
import torch
from fairseq.data import TokenBlockDataset

import fairseq_smlp  # noqa: F401  (restores numpy.compat for fairseq)


class Lines(torch.utils.data.Dataset):
    def __init__(self, lines):
        self.lines = [torch.tensor(line) for line in lines]
        self.sizes = np.array([len(line) for line in lines])

    def __getitem__(self, index):
        return self.lines[index]

    def __len__(self):
        return len(self.lines)


def test_eos_break_mode_gives_one_block_per_line():
    lines = [[5, 6, 2], [7, 2], [8, 9, 10, 2]]
    blocks = TokenBlockDataset(Lines(lines), Lines(lines).sizes, block_size=None, pad=1, eos=2,
                               break_mode="eos")
    assert [blocks[i].tolist() for i in range(len(blocks))] == lines
