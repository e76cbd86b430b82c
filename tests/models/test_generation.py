"""fairseq's SequenceGenerator, the engine of fairseq-generate, fairseq-interactive and the hub
interface, runs every model family: its greedy search writes, token by token, what a loop of
full forward passes picks, with the same log-probabilities, also where the all-MLP decoders
decode one position at a time; beam search decodes the same incrementally or not."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator
from helpers import build_model, make_dictionary

from fairseq_smlp.models.all_mlp import AllMlpDecoder
from fairseq_smlp.modules.spatial_gating import INITIAL_ROWS
from fairseq_smlp.partial_prediction import context_length

ARCHS = {
    "gmlp_lm_tiny": {},
    "smlp_deterministic_tiny": dict(sparse_layers=1),
    "smlp_partial_tiny": dict(sparse_layers=1, prediction_fraction=0.8),
    "transformer_lm_switch_tiny": {},
    "transformer_lm_base_tiny": {},
    "transformer_lm_hash_tiny": {},
}
PROMPT, NEW = 5, 6
INCREMENTAL = {"gmlp_lm_tiny", "smlp_deterministic_tiny"}  # smlp_partial recomputes


def greedy_by_hand(model, dictionary, prompt, steps):
    """[eos] + prompt, then ``steps`` times the likeliest next token of a full forward pass
    (never padding, never end-of-sentence: the generator's min_len forbids it here). The tokens
    after [eos] and the log-probability of each."""
    tokens = torch.cat([torch.tensor([[dictionary.eos()]]), prompt], dim=1)
    for _ in range(steps):
        log_probs = model.get_normalized_probs(model(tokens), log_probs=True)[:, -1]
        log_probs[:, [dictionary.pad(), dictionary.eos()]] = -torch.inf
        tokens = torch.cat([tokens, log_probs.argmax(-1, keepdim=True)], dim=1)
    every = model.get_normalized_probs(model(tokens[:, :-1]), log_probs=True)[0]  # (L, V)
    return tokens[0, 1:].tolist(), every.gather(1, tokens[0, 1:, None]).squeeze(1)


def randomized(arch, context=16):
    torch.manual_seed(0)
    model = build_model(arch, tokens_per_sample=context, decoder_layers=2, **ARCHS[arch]).eval()
    with torch.no_grad():  # away from the near-identity initialisation, which repeats tokens
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    return model


def generate(model, dictionary, prompt, beam, new=NEW):
    """The hypotheses after ``prompt`` (1, P): exactly ``new`` tokens, then end-of-sentence."""
    length = prompt.size(1)
    generator = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=1,
                                  max_len_b=new, min_len=length + new)
    sample = {"net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([length])}}
    return generator.generate([model], sample, prefix_tokens=prompt)[0]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generation_is_the_argmax_of_full_forward_passes(arch):
    dictionary = make_dictionary(40)
    model = randomized(arch)
    if isinstance(model.decoder, AllMlpDecoder):
        assert model.decoder.decodes_incrementally == (arch in INCREMENTAL)
    prompt = torch.randint(4, 44, (1, PROMPT))
    best = generate(model, dictionary, prompt, beam=1)[0]
    tokens, log_probs = greedy_by_hand(model, dictionary, prompt, NEW)
    assert best["tokens"].tolist() == tokens + [dictionary.eos()]
    torch.testing.assert_close(best["positional_scores"][PROMPT:-1], log_probs[PROMPT:],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(INCREMENTAL))
@pytest.mark.parametrize("new", [NEW, 2 * INITIAL_ROWS])
def test_beam_search_is_the_same_incremental_or_not(arch, new, monkeypatch):
    """Beams reorder the kept past at every step; past INITIAL_ROWS positions its buffer grows."""
    dictionary = make_dictionary(40)
    model = randomized(arch, context=PROMPT + new + 1)
    prompt = torch.randint(4, 44, (1, PROMPT))
    incremental = generate(model, dictionary, prompt, beam=3, new=new)
    monkeypatch.setattr(AllMlpDecoder, "decodes_incrementally", property(lambda self: False))
    recomputed = generate(model, dictionary, prompt, beam=3, new=new)
    for a, b in zip(incremental, recomputed):
        assert a["tokens"].tolist() == b["tokens"].tolist()
        torch.testing.assert_close(a["positional_scores"], b["positional_scores"],
                                   rtol=1e-4, atol=1e-4)


def test_smlp_partial_decodes_a_prompt_shorter_than_its_routing_context():
    """A prefix shorter than P is routed on what there is; from P positions on, the routing is
    fixed, so a longer input leaves the outputs of earlier positions as they were; and greedy
    decoding from a 2-token prompt writes what full forward passes pick."""
    dictionary = make_dictionary(40)
    model = randomized("smlp_partial_tiny")
    context = context_length(16, ARCHS["smlp_partial_tiny"]["prediction_fraction"])
    assert 2 < context < 16
    tokens = torch.randint(4, 44, (1, 16))
    with torch.no_grad():
        full = model(tokens)[0]
        for length in range(context, 16):
            torch.testing.assert_close(model(tokens[:, :length])[0], full[:, :length],
                                       rtol=1e-4, atol=1e-4)
    prompt = tokens[:, :2]
    best = generate(model, dictionary, prompt, beam=1)[0]
    assert best["tokens"].tolist() == greedy_by_hand(model, dictionary, prompt, NEW)[0] + [
        dictionary.eos()]
