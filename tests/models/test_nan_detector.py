"""fairseq's NanDetector, which fairseq-train runs when gradients overflow, walks every module
of a model with the project's MoE layers and reports what it finds instead of failing."""

import pytest
import torch
from fairseq.nan_detector import NanDetector
from helpers import build_model


@pytest.mark.parametrize("arch", ["smlp_deterministic_tiny", "transformer_lm_switch_tiny",
                                  "transformer_lm_hash_tiny"])
def test_nan_detector_runs_through_every_moe_layer(arch, caplog):
    model = build_model(arch, decoder_layers=2).train()
    tokens = torch.randint(4, 40, (2, 16))
    with torch.no_grad():
        model.decoder.embed_tokens.weight[5] = float("nan")  # a token whose embedding overflowed
    tokens[0, 3] = 5
    with NanDetector(model):
        model(tokens)[0].float().sum().backward()
    assert "NaN detected in output of" in caplog.text
