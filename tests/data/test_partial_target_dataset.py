import torch

from fairseq_smlp.data.partial_target_dataset import PartialTargetDataset

PAD = 1


class Blocks(torch.utils.data.Dataset):
    """Two-sample stand-in for fairseq's language-modelling dataset: its collater returns
    source and target blocks as fairseq's does."""

    def __init__(self, targets):
        self.targets = targets

    def __getitem__(self, index):
        return self.targets[index]

    def __len__(self):
        return len(self.targets)

    def collater(self, samples):
        if not samples:
            return {}
        target = torch.stack(samples)
        return {"net_input": {"src_tokens": target}, "target": target,
                "ntokens": int(target.numel())}


def test_context_targets_become_padding_and_are_not_counted():
    targets = [torch.tensor([5, 6, 7, 8, PAD]), torch.tensor([9, 10, 11, 12, 13])]
    batch = PartialTargetDataset(Blocks(targets), context=2, pad=PAD).collater(targets)
    assert batch["target"].tolist() == [[PAD, PAD, 7, 8, PAD], [PAD, PAD, 11, 12, 13]]
    assert batch["ntokens"] == 5  # scored, non-padding targets only
    assert batch["start_indices"].tolist() == [2, 2]  # fairseq-eval-lm scores from here
    assert batch["net_input"]["src_tokens"][0].tolist() == [5, 6, 7, 8, PAD]  # inputs untouched


def test_empty_batch_passes_through():
    assert PartialTargetDataset(Blocks([]), context=2, pad=PAD).collater([]) == {}
