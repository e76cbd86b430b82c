from types import SimpleNamespace

import pytest
import torch
from helpers import build_model, make_dictionary, randomize_spatial_weights

from fairseq_smlp.models.gmlp_lm import GmlpLanguageModel, GmlpLanguageModelConfig


def test_default_arch_is_the_paper_main_size():
    config = GmlpLanguageModelConfig()
    assert (config.decoder_embed_dim, config.decoder_ffn_embed_dim, config.decoder_layers) == (
        1024, 4096, 24
    )


@pytest.mark.parametrize("share", [True, False])
def test_causal_in_eval_mode(share):
    """Changing tokens at positions >= t never changes the logits at positions < t."""
    torch.manual_seed(0)
    model = build_model(
        "gmlp_lm_tiny", tokens_per_sample=16, decoder_layers=2,
        share_decoder_input_output_embed=share,
    )
    randomize_spatial_weights(model)
    model.eval()
    tokens = torch.randint(4, 40, (2, 16))
    logits = model(tokens)[0]
    for t in [0, 1, 5, 11, 15]:
        perturbed = tokens.clone()
        perturbed[:, t:] = torch.randint(4, 40, perturbed[:, t:].shape)
        perturbed[:, t] = (tokens[:, t] - 3) % 36 + 4  # surely different at t
        changed = model(perturbed)[0]
        torch.testing.assert_close(changed[:, :t], logits[:, :t], rtol=0, atol=1e-5)
        # Not vacuous: the perturbed positions do see the change.
        assert not torch.allclose(changed[:, t], logits[:, t], atol=1e-3)


def test_shorter_input_gives_the_prefix_of_the_longer_one():
    torch.manual_seed(0)
    model = build_model("gmlp_lm_tiny", tokens_per_sample=16, decoder_layers=2)
    randomize_spatial_weights(model)
    model.eval()
    tokens = torch.randint(4, 40, (2, 16))
    torch.testing.assert_close(model(tokens[:, :9])[0], model(tokens)[0][:, :9], atol=1e-5,
                               rtol=0)


def test_overlong_input_names_the_limit():
    model = build_model("gmlp_lm_tiny", tokens_per_sample=16, decoder_layers=1)
    with pytest.raises(ValueError, match="the input is 17 tokens but this model's context is 16"):
        model(torch.randint(4, 40, (1, 17)))


def tiny_gmlp(task_tokens_per_sample, add_bos_token=False, max_target_positions=None):
    task = SimpleNamespace(target_dictionary=make_dictionary(10), args=SimpleNamespace(
        tokens_per_sample=task_tokens_per_sample, add_bos_token=add_bos_token))
    args = SimpleNamespace(
        tokens_per_sample=16, max_target_positions=max_target_positions, decoder_embed_dim=8,
        decoder_ffn_embed_dim=16, decoder_layers=1, dropout=0.0,
        share_decoder_input_output_embed=True,
    )
    return GmlpLanguageModel.build_model(args, task)


def test_task_asking_for_longer_samples_than_the_context_is_an_error():
    with pytest.raises(ValueError, match="--tokens-per-sample 32 gives 32-token inputs but this "
                                         "model's context is 16 tokens"):
        tiny_gmlp(32)
    with pytest.raises(ValueError, match="--tokens-per-sample 16 with --add-bos-token gives "
                                         "17-token inputs .* use --tokens-per-sample 15 with "
                                         "--add-bos-token or less"):
        tiny_gmlp(16, add_bos_token=True, max_target_positions=16)


def test_a_leading_bos_token_gets_a_position_of_its_own():
    model = tiny_gmlp(16, add_bos_token=True)
    assert model.max_positions() == 17
    vocab = len(model.decoder.dictionary)
    assert model(torch.randint(4, vocab, (2, 17)))[0].shape == (2, 17, vocab)


def test_odd_ffn_dim_names_the_flag():
    with pytest.raises(ValueError, match="--decoder-ffn-embed-dim must be even.*got 129"):
        build_model("gmlp_lm_tiny", decoder_ffn_embed_dim=129)


def test_gradients_reach_every_parameter():
    model = build_model("gmlp_lm_tiny", tokens_per_sample=8, decoder_layers=2)
    logits = model(torch.randint(4, 40, (2, 8)))[0]
    logits.logsumexp(-1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("arch", ["gmlp_lm_tiny", "smlp_deterministic_tiny", "smlp_partial_tiny"])
def test_a_checkpoint_of_another_context_is_refused_in_words(arch):
    fraction = 0.8 if arch == "smlp_partial_tiny" else None
    trained = build_model(arch, tokens_per_sample=8, prediction_fraction=fraction)
    model = build_model(arch, tokens_per_sample=16, prediction_fraction=fraction)
    with pytest.raises(ValueError, match="this checkpoint's spatial maps are 8 x 8: .* built for "
                                         "16 tokens .* --max-target-positions 8"):
        model.load_state_dict(trained.state_dict())
    build_model(arch, tokens_per_sample=8, prediction_fraction=fraction).load_state_dict(
        trained.state_dict())
