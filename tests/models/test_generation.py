"""fairseq's SequenceGenerator, the engine of fairseq-generate, fairseq-interactive and the hub
interface, runs every model family: its greedy search writes, token by token, what a loop of
full forward passes picks."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator
from helpers import build_model, make_dictionary

ARCHS = {
    "gmlp_lm_tiny": {},
    "smlp_deterministic_tiny": dict(sparse_layers=1),
    "smlp_partial_tiny": dict(sparse_layers=1, prediction_fraction=0.8),
    "transformer_lm_switch_tiny": {},
    "transformer_lm_base_tiny": {},
    "transformer_lm_hash_tiny": {},
}
PROMPT, NEW = 5, 6


def greedy_by_hand(model, dictionary, prompt, steps):
    """[eos] + prompt, then ``steps`` times the likeliest next token of a full forward pass
    (never padding, never end-of-sentence: the generator's min_len forbids it here)."""
    tokens = torch.cat([torch.tensor([[dictionary.eos()]]), prompt], dim=1)
    for _ in range(steps):
        log_probs = model.get_normalized_probs(model(tokens), log_probs=True)[:, -1]
        log_probs[:, [dictionary.pad(), dictionary.eos()]] = -torch.inf
        tokens = torch.cat([tokens, log_probs.argmax(-1, keepdim=True)], dim=1)
    return tokens[0, 1:].tolist()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generation_is_the_argmax_of_full_forward_passes(arch):
    torch.manual_seed(0)
    dictionary = make_dictionary(40)
    model = build_model(arch, tokens_per_sample=16, decoder_layers=2, **ARCHS[arch]).eval()
    with torch.no_grad():  # away from the near-identity initialisation, which repeats tokens
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    prompt = torch.randint(4, 44, (1, PROMPT))
    generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=1, max_len_b=NEW,
                                  min_len=PROMPT + NEW)
    sample = {"net_input": {"src_tokens": prompt, "src_lengths": torch.tensor([PROMPT])}}
    tokens = generator.generate([model], sample, prefix_tokens=prompt)[0][0]["tokens"]
    want = greedy_by_hand(model, dictionary, prompt, NEW)
    assert tokens.tolist() == want + [dictionary.eos()]
