import argparse
import subprocess
import sys

import pytest
import torch
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from helpers import build_model

from fairseq_smlp.models.transformer_moe import MoEDecoderLayer, moe_layer_indices
from fairseq_smlp.modules.gates import BalancedGate, HashGate, TopKGate

ARCHS = {
    "transformer_lm_gshard_tiny": (TopKGate, 2),
    "transformer_lm_switch_tiny": (TopKGate, 1),
    "transformer_lm_base_tiny": (BalancedGate, None),
    "transformer_lm_hash_tiny": (HashGate, None),
}


def tiny(arch, **overrides):
    torch.manual_seed(0)
    return build_model(arch, tokens_per_sample=16, **overrides)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_other_layer_is_an_moe_layer_with_its_gate(arch):
    gate_type, k = ARCHS[arch]
    layers = tiny(arch).decoder.layers
    assert [type(layer) for layer in layers] == [
        TransformerDecoderLayerBase, MoEDecoderLayer, TransformerDecoderLayerBase, MoEDecoderLayer
    ]
    gate = layers[1].fc2.gate
    assert isinstance(gate, gate_type)
    if k is not None:
        assert gate.k == k
    assert moe_layer_indices(6, 3) == [2, 5]


def test_paper_size_is_gpt3_medium():
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["transformer_lm_switch"](args)
    sizes = (args.decoder_embed_dim, args.decoder_ffn_embed_dim, args.decoder_layers,
             args.decoder_attention_heads, args.moe_gate)
    assert sizes == (1024, 4096, 24, 16, "top1")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_causal_in_eval_mode(arch):
    model = tiny(arch).eval()
    tokens = torch.randint(4, 40, (3, 16))
    logits = model(tokens)[0]
    for t in [1, 6, 15]:
        perturbed = tokens.clone()
        perturbed[:, t:] = torch.randint(4, 40, perturbed[:, t:].shape)
        perturbed[:, t] = (tokens[:, t] - 3) % 36 + 4
        changed = model(perturbed)[0]
        torch.testing.assert_close(changed[:, :t], logits[:, :t], rtol=0, atol=1e-5)
        assert not torch.allclose(changed[:, t], logits[:, t], atol=1e-4)


def test_gate_losses_reach_the_output():
    model = tiny("transformer_lm_gshard_tiny").train()
    extra = model(torch.randint(4, 40, (2, 16)))[1]
    assert len(extra["moe_gate_losses"]) == 2
    assert all(loss.requires_grad for loss in extra["moe_gate_losses"])


def test_routing_stats_are_named_after_their_decoder_layer():
    model = tiny("transformer_lm_gshard_tiny").train()  # MoE layers at layers 1 and 3 of 4
    stats = model(torch.randint(4, 40, (2, 16)))[1]["routing_stats"]
    assert set(stats) == {f"layer{i}.moe.{figure}" for i in (1, 3)
                          for figure in ("dropped", "load_cv", "gate_entropy")}


def test_hash_routing_follows_token_ids_and_survives_a_checkpoint(tmp_path):
    model = tiny("transformer_lm_hash_tiny", moe_hash_seed=3).eval()
    tokens = torch.randint(4, 40, (2, 16))
    logits = model(tokens)[0]
    moe = model.decoder.layers[1].fc2
    expected = moe.gate.token_to_expert[tokens.reshape(-1)]  # batch-major, as the layer routes
    assert torch.equal(moe.last_assignment[:, 0], expected)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    other = tiny("transformer_lm_hash_tiny", moe_hash_seed=4).eval()
    assert not torch.equal(other.decoder.layers[1].fc2.gate.token_to_expert,
                           moe.gate.token_to_expert)
    other.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert torch.equal(other.decoder.layers[1].fc2.gate.token_to_expert, moe.gate.token_to_expert)
    torch.testing.assert_close(other(tokens)[0], logits)


def test_hash_map_is_the_same_in_another_process():
    script = (
        "import torch; from fairseq_smlp.modules.gates import HashGate; "
        "print(HashGate(500, 8, seed=11).token_to_expert.tolist())"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    assert other == str(HashGate(500, 8, seed=11).token_to_expert.tolist())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_incremental_decoding_matches_the_full_forward(arch):
    """fairseq's generator calls decoder.forward directly, one position at a time."""
    model = tiny(arch).eval()
    tokens = torch.randint(4, 40, (3, 8))
    full = model(tokens)[0]
    state = {}
    for t in range(8):
        step = model.decoder.forward(tokens[:, : t + 1], incremental_state=state)[0]
        torch.testing.assert_close(step[:, -1], full[:, t], rtol=1e-4, atol=1e-4)


def test_layerdrop_reports_only_the_layers_that_ran():
    torch.manual_seed(0)
    model = tiny("transformer_lm_switch_tiny", decoder_layerdrop=0.5).train()
    for _ in range(6):
        logits, extra = model(torch.randint(4, 40, (2, 16)))
        ran = sum(1 for moe in model.moe_layers() if moe.gate_loss is not None)
        assert len(extra["moe_gate_losses"]) == ran
        (logits.logsumexp(-1).mean() + sum(extra["moe_gate_losses"], torch.tensor(0.0))).backward()


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--moe-capacity-factor must be > 0; got -1"):
        tiny("transformer_lm_switch_tiny", moe_capacity_factor=-1.0)
    for freq in [0, 5]:
        with pytest.raises(ValueError, match=f"--moe-freq {freq}: .* must be between 1 and 4"):
            tiny("transformer_lm_switch_tiny", moe_freq=freq, decoder_layers=4)
    with pytest.raises(ValueError, match="--moe-expert-count 1: --moe-gate top2 sends every "
                                         "token to 2 experts, so it needs at least 2"):
        tiny("transformer_lm_gshard_tiny", moe_expert_count=1)
    with pytest.raises(ValueError, match="--moe-expert-count must be at least 1; got 0"):
        tiny("transformer_lm_base_tiny", moe_expert_count=0)
    with pytest.raises(ValueError, match="--moe-expert-ffn-dim must be positive, or 0 for "
                                         "--decoder-ffn-embed-dim; got -8"):
        tiny("transformer_lm_gshard_tiny", moe_expert_ffn_dim=-8)


def test_capacity_drops_whole_trailing_sequences():
    """fairseq's decoder runs time-major; its MoE layers serve tokens sequence by sequence. All
    24 tokens of 3 sequences of 8 prefer expert 0, whose capacity holds 8: the first sequence,
    whole, and no token of the others (not the first positions of every sequence)."""
    model = tiny("transformer_lm_switch_tiny", moe_capacity_factor=4 / 3)
    moe = model.decoder.layers[1].fc2
    with torch.no_grad():
        moe.gate.wg.weight.zero_()
        moe.gate.wg.weight[0].fill_(1.0)
        x = torch.rand(8, 3, moe.gate.wg.weight.size(1)) + 0.1  # (T, B, D): all prefer expert 0
        out = moe.train()(x)
    capacity = moe.gate(x.reshape(-1, x.size(-1))).capacity
    assert capacity == 8  # ceil(4/3 * ceil(24 / 4)) = 8, one sequence
    kept = out.abs().sum(-1) > 0  # (T, B): a dropped token's MoE output is zero
    assert kept[:, 0].all() and not kept[:, 1:].any()


def test_base_gate_scores_the_residual_stream_and_experts_start_at_zero():
    """As fairseq's BaseLayer: the balanced gate scores the FFN block's residual input, not the
    normalised input the experts run on, and every expert's output projection starts at zero.
    Greedy (inference) choices are recomputed here from the residual captured at the norm."""
    model = tiny("transformer_lm_base_tiny").eval()
    layer = model.decoder.layers[1]
    assert layer.normalize_before
    assert not layer.fc2.experts.fc2_weight.any()
    assert tiny("transformer_lm_switch_tiny").decoder.layers[1].fc2.experts.fc2_weight.any()
    with torch.no_grad():  # a norm whose output ranks the experts unlike its input
        layer.final_layer_norm.weight.uniform_(-2, 2)
        layer.final_layer_norm.bias.uniform_(-2, 2)
    seen = {}
    layer.final_layer_norm.register_forward_hook(
        lambda norm, args, out: seen.update(residual=args[0], normed=out))
    model(torch.randint(4, 40, (3, 16)))
    centroids = layer.fc2.gate.centroids

    def greedy(x):  # (T, B, C) -> (B T,) batch-major, as the layer routes
        return (x.transpose(0, 1).reshape(-1, x.size(-1)) @ centroids.t()).argmax(-1)

    chosen = layer.fc2.last_assignment.squeeze(1)
    assert torch.equal(chosen, greedy(seen["residual"]))
    assert not torch.equal(chosen, greedy(seen["normed"]))
