"""Padding positions of a batch take no expert slot in any arch with token routing."""

import pytest
import torch
from helpers import build_model

from fairseq_smlp.modules.moe_layer import MoELayer

VOCAB, T = 40, 16


@pytest.mark.parametrize("arch", [
    "smlp_deterministic_tiny", "transformer_lm_gshard_tiny", "transformer_lm_switch_tiny",
    "transformer_lm_base_tiny", "transformer_lm_hash_tiny",
])
@pytest.mark.parametrize("training", [True, False])
def test_padding_positions_are_routed_to_no_expert(arch, training):
    torch.manual_seed(0)
    model = build_model(arch, num_words=VOCAB, tokens_per_sample=T).train(training)
    pad = model.decoder.dictionary.pad()
    tokens = torch.randint(4, VOCAB, (3, T))
    tokens[0, 5:] = pad  # sequences of 5, 11 and 16 tokens
    tokens[1, 11:] = pad
    model(tokens)
    layers = [module for module in model.modules() if isinstance(module, MoELayer)]
    assert layers
    for layer in layers:
        routed = layer.last_assignment.reshape(3, T, -1)  # (B, T, k), batch-major
        withdrawn = layer.num_experts
        assert (routed[tokens.eq(pad)] == withdrawn).all(), arch
        assert (routed[tokens.ne(pad)][:, 0] < withdrawn).all(), arch
