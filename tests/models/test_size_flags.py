"""The models' flags at values no model has: zero, negative, not finite, too large to allocate.
Each is refused by name where fairseq-train builds the model, not trained silently or ended in a
torch traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import build_model

import fairseq_smlp

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch,flags,message", [
    # Built before: a model without blocks, trained without a word.
    ("gmlp_lm_tiny", dict(decoder_layers=0), "--decoder-layers must be at least 1; got 0"),
    ("smlp_deterministic_tiny", dict(decoder_layers=-2, sparse_layers=0),
     "--decoder-layers must be at least 1; got -2"),
    # Before: a ZeroDivisionError, a negative dimension in torch, a model of 0-wide gating units.
    ("gmlp_lm_tiny", dict(decoder_embed_dim=0), "--decoder-embed-dim must be at least 1; got 0"),
    ("gmlp_lm_tiny", dict(decoder_embed_dim=-8), "--decoder-embed-dim must be at least 1; got -8"),
    ("gmlp_lm_tiny", dict(decoder_ffn_embed_dim=0),
     "--decoder-ffn-embed-dim must be at least 2; got 0"),
    ("gmlp_lm_tiny", dict(tokens_per_sample=0), "--tokens-per-sample must be at least 1; got 0"),
    ("gmlp_lm_tiny", dict(tokens_per_sample=-3), "--tokens-per-sample must be at least 1; got -3"),
    # Before: no dropout for a negative or NaN one; torch's own traceback above 1.
    ("gmlp_lm_tiny", dict(dropout=-0.5), "--dropout must be at least 0 and below 1"),
    ("smlp_deterministic_tiny", dict(dropout=float("nan")),
     "--dropout must be at least 0 and below 1 (the probability that an activation is zeroed "
     "in training); got nan"),
    ("gmlp_lm_tiny", dict(dropout=1.5), "--dropout must be at least 0 and below 1"),
    # Before: ignored, the blocks spread by --sparse-layers instead.
    ("smlp_deterministic_tiny", dict(sparse_layer_indices=""),
     "--sparse-layer-indices must be comma-separated integers between 0 and 3"),
    # Before: an overflow in torch.
    ("transformer_lm_hash_tiny", dict(moe_hash_seed=2**70),
     f"--moe-hash-seed must be an integer from {-(2**63)} to {2**64 - 1} (torch's seeds); got "
     f"{2**70}"),
])
def test_values_no_model_has_are_refused_by_name(arch, flags, message):
    with pytest.raises(ValueError) as error:
        build_model(arch, **flags)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("arch,experts,top", [("transformer_lm_switch_tiny", 4, 1),
                                              ("transformer_lm_gshard_tiny", 3, 2)])
@pytest.mark.parametrize("factor", [float("inf"), 1e300])
def test_a_capacity_factor_past_room_for_every_token_drops_nothing(arch, experts, top, factor):
    """Before: an OverflowError in the first training step, the capacity past int64. A factor
    of E / k already gives every expert room for every token."""
    model = build_model(arch, moe_expert_count=experts, moe_capacity_factor=factor).train()
    moe = model.moe_layers()[0]
    assert moe.gate.capacity_factor == experts / top
    model(torch.randint(4, 40, (2, 16)))
    assert moe.last_kept_load.sum() == moe.last_load.sum() == 2 * 16 * top


@pytest.mark.parametrize("arch,flags,named", [
    ("gmlp_lm_tiny", dict(tokens_per_sample=10**8), "--tokens-per-sample 100000000"),
    ("smlp_deterministic_tiny", dict(moe_expert_count=2**40), f"--moe-expert-count {2**40}"),
    ("transformer_lm_switch_tiny", dict(moe_expert_count=10**11),
     "--moe-expert-count 100000000000"),
    ("transformer_lm_switch_tiny", dict(moe_expert_ffn_dim=10**20),
     "--moe-expert-ffn-dim 100000000000000000000"),
])
def test_sizes_too_large_to_allocate_name_their_flags(arch, flags, named):
    with pytest.raises(ValueError) as error:
        build_model(arch, **flags)
    message = str(error.value)
    assert message.startswith("the model's parameters do not fit in memory (torch could not "
                              "allocate ")
    assert named in message and message.endswith(": give smaller values")


def test_fairseq_train_prints_the_refusal_as_one_line(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", str(data_dir),
         "--user-dir", str(Path(fairseq_smlp.__file__).parent), "--task", "language_modeling",
         "--arch", "gmlp_lm_tiny", "--decoder-layers", "0", "--tokens-per-sample", "32",
         "--batch-size", "4", "--optimizer", "adam", "--max-update", "1", "--cpu",
         "--save-dir", str(tmp_path / "checkpoints")],
        cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(
        ": error: --decoder-layers must be at least 1; got 0")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
