"""Prompts are encoded as the training data was: the same ids as fairseq-preprocess wrote."""

from pathlib import Path

import pytest
from fairseq.data import Dictionary, data_utils

from fairseq_smlp.zero_shot.example import Candidate
from fairseq_smlp.zero_shot.tasks import TASKS, load_examples
from fairseq_smlp.zero_shot.text_encoding import TextEncoder

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def encoder(data_dir):
    dictionary = Dictionary.load(str(data_dir / "dict.txt"))
    return TextEncoder.from_file(data_dir.parent / "spm.model", dictionary)


def test_text_gets_the_ids_of_the_binarized_corpus(encoder, data_dir):
    """The first lines of the raw training text, encoded as one prompt, against the ids
    fairseq-preprocess stored for them (each line ends with the end-of-sentence id)."""
    lines = (data_dir.parent / "raw" / "train.txt").read_text(encoding="utf-8").splitlines()
    lines = lines[: lines.index("") + 3]  # the first document, its boundary and two more lines
    binarized = data_utils.load_indexed_dataset(str(data_dir / "train"), encoder.dictionary)
    expected = [int(i) for index in range(len(lines)) for i in binarized[index]]
    assert encoder.encode("\n".join(lines)) + [encoder.dictionary.eos()] == expected


def test_candidates_split_the_whole_texts_ids(encoder):
    eos = encoder.dictionary.eos()
    for task, name in [("winogrande", "winogrande.jsonl"), ("record", "record.jsonl"),
                       ("piqa", "piqa.jsonl")]:
        for example in load_examples(TASKS[task], DATA / name):
            for candidate in example.candidates:
                context, continuation = encoder.encode_candidate(candidate)
                assert context[0] == eos and continuation
                assert context[1:] + continuation == encoder.encode(
                    candidate.context + candidate.continuation)
                if candidate.continuation.startswith(" "):
                    assert continuation == encoder.encode(candidate.continuation)


def test_a_piece_across_the_boundary_belongs_to_the_continuation(encoder):
    """'It was Repre' + 'sentatives': the corpus vocabulary has the whole word as one piece, which
    the context alone cannot end with, so the continuation is that piece."""
    candidate = Candidate("It was Repre", "sentatives")
    whole = encoder.encode("It was Representatives")
    alone = encoder.encode("It was Repre")
    assert whole[: len(alone)] != alone  # the boundary falls inside a piece
    context, continuation = encoder.encode_candidate(candidate)
    assert context == [encoder.dictionary.eos()] + encoder.encode("It was")
    assert continuation == encoder.encode("Representatives") == whole[len(context) - 1:]
