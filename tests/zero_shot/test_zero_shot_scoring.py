"""Placement, batched scoring and accuracy, checked against log-likelihoods gathered by hand from
the model and against rigged language models whose right answers are known."""

import math
import random
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from helpers import build_model, randomize_spatial_weights
from zero_shot_reference import RiggedLM, direct_log_likelihood

from fairseq_smlp.zero_shot.evaluation import best, evaluate, score_examples
from fairseq_smlp.zero_shot.example import Candidate, Example
from fairseq_smlp.zero_shot.prompt_layout import Layout, layout_for
from fairseq_smlp.zero_shot.scoring import score_windows
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples
from fairseq_smlp.zero_shot.text_encoding import TextEncoder

DATA = Path(__file__).parent / "data"
FILES = {"copa": "copa.jsonl", "piqa": "piqa.jsonl", "winogrande": "winogrande.jsonl",
         "hellaswag": "hellaswag.jsonl", "storycloze": "storycloze.csv", "record": "record.jsonl"}
CPU = torch.device("cpu")
PAD, EOS = 1, 2
SMALL = dict(decoder_layers=2, decoder_embed_dim=32, decoder_ffn_embed_dim=64)
SMALL_TRANSFORMER = dict(SMALL, decoder_attention_heads=2)
ARCHS = {
    "gmlp_lm_tiny": SMALL,
    "smlp_deterministic_tiny": dict(SMALL, sparse_layers=1),
    "smlp_partial_tiny": dict(SMALL, sparse_layers=1, prediction_fraction=0.8),
    "transformer_lm": SMALL_TRANSFORMER,
    "transformer_lm_gshard_tiny": SMALL_TRANSFORMER,
    "transformer_lm_switch_tiny": SMALL_TRANSFORMER,
    "transformer_lm_base_tiny": SMALL_TRANSFORMER,
    "transformer_lm_hash_tiny": SMALL_TRANSFORMER,
}


def tiny_model(arch, num_words, tokens_per_sample):
    torch.manual_seed(0)
    model = build_model(arch, num_words=num_words, tokens_per_sample=tokens_per_sample,
                        **ARCHS[arch])
    randomize_spatial_weights(model)
    return model.eval()


def test_free_layout_keeps_the_text_and_cuts_the_context_from_the_left():
    layout = Layout(length=8, scored_from=0)
    window = layout.place([EOS, 10, 11], [12, 13], PAD)
    assert (window.tokens, window.targets) == ([EOS, 10, 11, 12], [10, 11, 12, 13])
    assert window.scored == range(2, 4) and not window.truncated and window.unscored == 0
    long = layout.place([EOS] + list(range(10, 20)), [30, 31, 32], PAD)
    assert long.tokens == [14, 15, 16, 17, 18, 19, 30, 31]
    assert long.targets == [15, 16, 17, 18, 19, 30, 31, 32]
    assert long.scored == range(5, 8) and long.truncated and long.unscored == 0


def test_partial_prediction_layout_starts_with_the_text_and_scores_from_p_only():
    layout = Layout(length=10, scored_from=3)
    window = layout.place([EOS, 10, 11, 12], [13, 14], PAD)  # long enough: no padding
    assert (window.tokens, window.targets) == ([EOS, 10, 11, 12, 13], [10, 11, 12, 13, 14])
    assert window.scored == range(3, 5) and not window.truncated
    short = layout.place([EOS, 10], [12, 13], PAD)  # padded until 12's prediction sits at P
    assert short.tokens == [PAD, PAD, EOS, 10, 12]
    assert short.targets == [PAD, PAD, 10, 12, 13]
    assert short.scored == range(3, 5)
    too_long = layout.place([EOS, 10], list(range(20, 29)), PAD)  # 9 > T - P = 7 to score
    assert too_long.tokens == [EOS, 10] + list(range(20, 28))  # no room to pad
    assert too_long.scored == range(3, 10) and too_long.unscored == 2
    assert [too_long.targets[i] for i in too_long.scored] == list(range(22, 29))


@pytest.mark.parametrize("scored_from", [0, 3])
def test_every_window_scores_the_end_of_its_continuation_and_nothing_before_p(scored_from):
    layout = Layout(length=12, scored_from=scored_from)
    rng = random.Random(0)
    for _ in range(300):
        context = [EOS] + [rng.randrange(4, 50) for _ in range(rng.randrange(0, 20))]
        continuation = [rng.randrange(4, 50) for _ in range(rng.randrange(1, 15))]
        window = layout.place(context, continuation, PAD)
        sequence = context + continuation
        assert len(window.tokens) == len(window.targets) <= 12
        assert min(window.scored) >= layout.scored_from
        assert [window.targets[i] for i in window.scored] == \
            continuation[len(continuation) - len(window.scored):]
        assert window.unscored == len(continuation) - len(window.scored)
        assert window.truncated == (len(sequence) - 1 > 12)
        # Padding aside, the input is the end of the text and the targets the same shifted by one.
        inputs = min(len(sequence) - 1, 12)
        offset = len(window.tokens) - inputs
        assert window.tokens[:offset] == window.targets[:offset] == [PAD] * offset
        # Padding only where the continuation's first prediction would sit before P.
        assert offset == min(max(0, scored_from + 1 - len(context)), 12 - inputs)
        assert window.tokens[offset:] == sequence[-inputs - 1:-1]
        assert window.targets[offset:] == sequence[-inputs:]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_scores_equal_each_candidate_alone_through_the_model(arch):
    """Windows of mixed lengths (some cut from the left) scored in batches of 4 against each
    window run alone, unpadded, and against the by-hand reference where nothing was cut."""
    length = 16
    model = tiny_model(arch, num_words=36, tokens_per_sample=length)
    layout = layout_for(model)
    assert layout.scored_from == (length - int(0.8 * length) if arch == "smlp_partial_tiny"
                                  else 0)
    rng = random.Random(1)
    candidates = [([EOS] + [rng.randrange(4, 40) for _ in range(rng.randrange(0, 22))],
                   [rng.randrange(4, 40) for _ in range(rng.randrange(1, 4))])
                  for _ in range(11)]
    windows = [layout.place(context, continuation, PAD) for context, continuation in candidates]
    assert any(w.truncated for w in windows) and not all(w.truncated for w in windows)
    batched = score_windows(model, windows, PAD, batch_size=4, device=CPU)
    for (context, continuation), window, score in zip(candidates, windows, batched):
        with torch.no_grad():
            logits = model(torch.tensor([window.tokens]))[0][0]  # (L, V)
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        alone = sum(lprobs[i, window.targets[i]].item() for i in window.scored)
        assert score.log_likelihood == pytest.approx(alone, abs=1e-4)
        assert score.tokens == len(continuation)
        if not window.truncated:
            reference = direct_log_likelihood(model, context, continuation, pad=PAD,
                                              scored_from=layout.scored_from)
            assert score.log_likelihood == pytest.approx(reference, abs=1e-4)


def test_partial_prediction_scores_do_not_depend_on_what_follows():
    """smlp_partial: with a context longer than P the router reads the context itself, and
    log p(k1 k2 k3 | context) is the same whether k1..k3 are a whole candidate or the start of a
    longer one (the context stays at the same positions)."""
    length = 20
    model = tiny_model("smlp_partial_tiny", num_words=36, tokens_per_sample=length)
    layout = layout_for(model)
    rng = random.Random(2)
    context = [EOS] + [rng.randrange(4, 40) for _ in range(layout.scored_from + 3)]
    following = [rng.randrange(4, 40) for _ in range(6)]
    short, long = (layout.place(context, following[:n], PAD) for n in (3, 6))
    assert short.tokens[:layout.scored_from] == context[:layout.scored_from]
    (short_score,) = score_windows(model, [short], PAD, batch_size=1, device=CPU)
    with torch.no_grad():
        logits = model(torch.tensor([long.tokens]))[0][0]  # (L, V)
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    first_three = sum(lprobs[i, long.targets[i]].item() for i in list(long.scored)[:3])
    assert short_score.log_likelihood == pytest.approx(first_three, abs=1e-5)


@pytest.fixture(scope="module")
def encoder(data_dir):
    dictionary = Dictionary.load(str(data_dir / "dict.txt"))
    return TextEncoder.from_file(data_dir.parent / "spm.model", dictionary)


def shipped(task):
    return load_examples(TASKS[task], DATA / FILES[task])


@pytest.mark.parametrize("arch", ["gmlp_lm_tiny", "smlp_partial_tiny",
                                  "transformer_lm_switch_tiny"])
@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_examples_score_as_the_model_computes_them(encoder, task, arch):
    length = 320  # every shipped candidate fits whole
    model = tiny_model(arch, len(encoder.dictionary) - Dictionary().nspecial, length)
    layout = layout_for(model)
    examples = shipped(task)
    scores, windows = score_examples(examples, encoder, model, batch_size=5, device=CPU)
    for example, example_scores, example_windows in zip(examples, scores, windows):
        for candidate, score, window in zip(example.candidates, example_scores, example_windows):
            context, continuation = encoder.encode_candidate(candidate)
            assert not window.truncated
            reference = direct_log_likelihood(model, context, continuation,
                                              pad=encoder.dictionary.pad(),
                                              scored_from=layout.scored_from)
            assert score.log_likelihood == pytest.approx(reference, abs=1e-4)
            assert score.tokens == len(continuation)


def rigged(encoder, examples, bias):
    right = [sum(encoder.encode_candidate(example.candidates[index]), [])
             for example in examples for index in example.gold]
    return RiggedLM(right, len(encoder.dictionary), bias)


@pytest.mark.parametrize("task", list(TASKS))
def test_rigged_model_gets_every_example_right_and_its_reverse_none(encoder, task):
    examples = shipped(task)
    right = evaluate(task, examples, encoder, rigged(encoder, examples, 1000.0), 4, CPU)
    assert (right.accuracy, right.accuracy_norm) == (1.0, 1.0)
    wrong = evaluate(task, examples, encoder, rigged(encoder, examples, -1000.0), 4, CPU)
    assert (wrong.accuracy, wrong.accuracy_norm) == (0.0, 0.0)
    assert right.examples == wrong.examples == len(examples)


def test_truncated_contexts_and_unscored_continuations_are_counted(encoder):
    sentence = "The people of the United States sent their representatives to Congress."
    long_context = Example((Candidate(" ".join([sentence] * 6), " They met."),
                            Candidate(" ".join([sentence] * 6), " They left.")),
                           frozenset({0}), "test:1")
    short = Example((Candidate("It rained", " all day."), Candidate("It rained", " fish.")),
                    frozenset({1}), "test:2")
    long_continuation = Example((Candidate("Then", " " + sentence), Candidate("Then", " no.")),
                                frozenset({0}), "test:3")
    num_words = len(encoder.dictionary) - Dictionary().nspecial
    result = evaluate("test", [long_context, short, long_continuation], encoder,
                      tiny_model("smlp_partial_tiny", num_words, 16), 2, CPU)
    assert (result.examples, result.truncated, result.unscored) == (3, 2, 1)
    result = evaluate("test", [short], encoder, tiny_model("gmlp_lm_tiny", num_words, 16), 2, CPU)
    assert (result.truncated, result.unscored) == (0, 0)


def test_ties_go_to_the_first_candidate():
    assert best([1.0, 3.0, 3.0]) == 1
    assert best([-2.0, -1.0]) == 1


class UnigramLM(torch.nn.Module):
    """Every position predicts token v with probability ``probs[v]``, whatever came before."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.log_probs = probs.log()

    def forward(self, tokens):
        return self.log_probs.expand(*tokens.shape, -1), {}

    def get_normalized_probs(self, net_output, log_probs: bool):
        return torch.log_softmax(net_output[0], dim=-1)

    def max_positions(self) -> int:
        return 64


class IdEncoder:
    """Candidates whose texts are token ids separated by spaces."""

    dictionary = Dictionary()

    def encode_candidate(self, candidate):
        return ([int(t) for t in candidate.context.split()],
                [int(t) for t in candidate.continuation.split()])


def test_per_token_rule_divides_by_the_continuation_tokens():
    """Hand computation: log p(4) = -1.0, log p(5) = -0.8. One token of 4 sums to -1.0, three of 5
    to -2.4: the raw sum prefers the first, the mean per token (-1.0 against -0.8) the second. A
    divisor one larger (-0.5 against -0.6) would prefer the first again."""
    probs = torch.full((8,), 0.0)
    probs[4], probs[5] = math.exp(-1.0), math.exp(-0.8)
    probs[[0, 2, 3, 6, 7]] = (1 - probs.sum()) / 5
    example = Example((Candidate("3", "4"), Candidate("3", "5 5 5")), frozenset({1}), "hand:1")
    (scores,), _ = score_examples([example], IdEncoder(), UnigramLM(probs), 2, CPU)
    assert [s.tokens for s in scores] == [1, 3]
    assert [s.log_likelihood for s in scores] == pytest.approx([-1.0, -2.4], abs=1e-5)
    assert [s.per_token for s in scores] == pytest.approx([-1.0, -0.8], abs=1e-5)
    result = evaluate("hand", [example], IdEncoder(), UnigramLM(probs), 2, CPU)
    assert (result.correct_raw, result.correct_per_token) == (0, 1)
