import pytest
import torch
from helpers import build_model, randomize_spatial_weights

from fairseq_smlp.models.smlp import parse_sparse_layer_indices, sparse_block_indices
from fairseq_smlp.modules.smoe import DeterministicSMoE, PartialPredictionSMoE
from fairseq_smlp.modules.sparse_block import SparseMlpBlock

T = 20
CONTEXT = 4  # T - floor(0.8 T)


def tiny(arch, **overrides):
    torch.manual_seed(0)
    fraction = 0.8 if "partial" in arch else None
    model = build_model(arch, tokens_per_sample=T, prediction_fraction=fraction,
                        decoder_layers=2, sparse_layers=1, **overrides)
    randomize_spatial_weights(model)
    return model.eval()


def test_sparse_blocks_are_spread_evenly():
    assert sparse_block_indices(4, 2) == [1, 3]
    assert sparse_block_indices(24, 12) == list(range(1, 24, 2))
    assert sparse_block_indices(6, 3) == [1, 3, 5]
    assert sparse_block_indices(5, 0) == []
    with pytest.raises(ValueError, match="--sparse-layers must lie between 0 and "
                                         "--decoder-layers \\(4\\); got 5"):
        sparse_block_indices(4, 5)


def test_sparse_blocks_can_be_placed_by_index():
    model = build_model("smlp_deterministic_tiny", decoder_layers=3, sparse_layer_indices="0,2")
    assert [isinstance(b, SparseMlpBlock) for b in model.decoder.blocks] == [True, False, True]
    for bad in ["3", "x", "-1", ""]:
        with pytest.raises(ValueError, match="--sparse-layer-indices must be comma-separated "
                                             "integers between 0 and 2"):
            parse_sparse_layer_indices(bad, 3)


def test_tiny_archs_build_the_right_blocks():
    deterministic = tiny("smlp_deterministic_tiny")
    partial = tiny("smlp_partial_tiny")
    for model, smoe_type in [(deterministic, DeterministicSMoE), (partial, PartialPredictionSMoE)]:
        blocks = model.decoder.blocks
        assert not isinstance(blocks[0], SparseMlpBlock)
        assert isinstance(blocks[1], SparseMlpBlock)
        assert isinstance(blocks[1].token_mixing.sgu.mixer, smoe_type)
    assert partial.decoder.blocks[1].token_mixing.sgu.mixer.context_positions == CONTEXT


@pytest.mark.parametrize("arch,first_scored", [("smlp_deterministic_tiny", 0),
                                               ("smlp_partial_tiny", CONTEXT)])
def test_causal_in_eval_mode(arch, first_scored):
    """Perturbing tokens at positions >= t leaves logits at positions < t unchanged, for every t
    in the scored region."""
    model = tiny(arch)
    tokens = torch.randint(4, 40, (3, T))
    logits = model(tokens)[0]
    for t in range(max(first_scored, 1), T):
        perturbed = tokens.clone()
        perturbed[:, t:] = torch.randint(4, 40, perturbed[:, t:].shape)
        perturbed[:, t] = (tokens[:, t] - 3) % 36 + 4
        changed = model(perturbed)[0]
        torch.testing.assert_close(changed[:, first_scored:t], logits[:, first_scored:t],
                                   rtol=0, atol=1e-5)
        assert not torch.allclose(changed[:, t], logits[:, t], atol=1e-4)


def test_partial_leaks_before_the_scored_region():
    """Why the context positions must not be scored: their logits see later context tokens."""
    model = tiny("smlp_partial_tiny")
    tokens = torch.randint(4, 40, (3, T))
    perturbed = tokens.clone()
    perturbed[:, CONTEXT - 1] = (tokens[:, CONTEXT - 1] - 3) % 36 + 4
    assert not torch.allclose(model(perturbed)[0][:, 0], model(tokens)[0][:, 0], atol=1e-6)


def test_partial_routing_depends_on_the_context_tokens_only():
    model = tiny("smlp_partial_tiny")
    smoe = model.decoder.blocks[1].token_mixing.sgu.mixer
    tokens = torch.randint(4, 40, (3, T))
    model(tokens)
    routing = smoe.last_assignment.clone()
    for t in [CONTEXT, CONTEXT + 3, T - 1]:
        perturbed = tokens.clone()
        perturbed[:, t:] = torch.randint(4, 40, perturbed[:, t:].shape)
        model(perturbed)
        assert torch.equal(smoe.last_assignment, routing)


def test_bad_input_names_the_flag():
    with pytest.raises(ValueError, match="--smoe-expert-count 3 must .* divide the sMoE width 256"):
        build_model("smlp_deterministic_tiny", smoe_expert_count=3)
    with pytest.raises(ValueError, match="--moe-expert-count must be at least 1; got 0"):
        build_model("smlp_deterministic_tiny", moe_expert_count=0)
    with pytest.raises(ValueError, match="--prediction-fraction must lie strictly between 0 and "
                                         "1 .*got 1.2"):
        build_model("smlp_partial_tiny", prediction_fraction=1.2)
    with pytest.raises(ValueError, match="train and evaluate it with --task partial_prediction_lm"):
        build_model("smlp_partial_tiny")
    model = build_model("smlp_deterministic_tiny", tokens_per_sample=8, decoder_layers=2)
    with pytest.raises(ValueError, match="the input is 9 tokens but this model's context is 8"):
        model(torch.randint(4, 40, (1, 9)))


def test_routing_stats_are_named_after_their_decoder_layer():
    model = tiny("smlp_partial_tiny").train()
    extra = model(torch.randint(4, 40, (4, T)))[1]
    stats = extra["routing_stats"]
    assert set(stats) == {"layer1.smoe.greedy_load_cv", "layer1.tmoe.load_cv",
                          "layer1.tmoe.greedy_load_cv", "layer1.tmoe.dropped"}
    assert float(stats["layer1.tmoe.dropped"]) == 0.0
    assert float(stats["layer1.tmoe.load_cv"]) == 0.0  # balanced in training


def test_a_checkpoint_of_another_prediction_fraction_names_both():
    trained = build_model("smlp_partial_tiny", tokens_per_sample=T, prediction_fraction=0.8,
                          decoder_layers=2, sparse_layers=1)  # routers read 4 of 20 positions
    other = build_model("smlp_partial_tiny", tokens_per_sample=T, prediction_fraction=0.5,
                        decoder_layers=2, sparse_layers=1)
    with pytest.raises(ValueError, match="routers read the first 4 positions of each 20-token "
                                         "block \\(--prediction-fraction 0.8 in training\\), but "
                                         "this task's --prediction-fraction 0.5 leaves 10: "
                                         "evaluate with --prediction-fraction 0.8"):
        other.load_state_dict(trained.state_dict())
    other = build_model("smlp_partial_tiny", tokens_per_sample=T, prediction_fraction=0.82,
                        decoder_layers=2, sparse_layers=1)  # 4 context positions too
    other.load_state_dict(trained.state_dict())
