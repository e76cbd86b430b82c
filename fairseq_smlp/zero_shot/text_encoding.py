"""Text to dictionary ids exactly as the training data was made.

fairseq_smlp.data.prepare writes one paragraph a line as sentencepiece pieces and
fairseq-preprocess looks each piece up in dict.txt and ends every line with the end-of-sentence
id (Dictionary.encode_line). A prompt is encoded the same way: each line's pieces, with the
end-of-sentence id between lines, and one in front, as every line of the corpus follows one.
"""

from pathlib import Path
from typing import List, Optional, Tuple

import sentencepiece as spm
from fairseq.data import Dictionary
from fairseq.tokenizer import tokenize_line

from .example import Candidate


class TextEncoder:
    def __init__(self, processor: spm.SentencePieceProcessor, dictionary: Dictionary):
        self.processor = processor
        self.dictionary = dictionary
        self.last_context: Tuple[Optional[str], List[int]] = (None, [])

    @classmethod
    def from_file(cls, spm_model: Path, dictionary: Dictionary) -> "TextEncoder":
        try:
            processor = spm.SentencePieceProcessor(model_file=str(spm_model))
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{spm_model} is not a sentencepiece model ({error}): give the "
                             f"spm.model the training data was encoded with by --spm-model"
                             ) from None
        check_pieces(processor, dictionary, spm_model)
        return cls(processor, dictionary)

    def encode(self, text: str) -> List[int]:
        ids = []
        for index, line in enumerate(text.split("\n")):
            if index > 0:
                ids.append(self.dictionary.eos())
            pieces = tokenize_line(" ".join(self.processor.encode(line, out_type=str)))
            ids.extend(self.dictionary.index(piece) for piece in pieces)  # as encode_line
        return ids

    def encode_context(self, context: str) -> List[int]:
        """``encode``, remembering the last context: an example's candidates share theirs."""
        if self.last_context[0] != context:
            self.last_context = (context, self.encode(context))
        return self.last_context[1]

    def encode_candidate(self, candidate: Candidate) -> Tuple[List[int], List[int]]:
        """(context ids, continuation ids) of the whole text encoded at once. The continuation
        is what follows the longest common prefix with the context encoded alone, so a piece
        that straddles the boundary (a blank filled in mid-word) belongs to the continuation."""
        whole = self.encode(candidate.context + candidate.continuation)
        context = self.encode_context(candidate.context)
        shared = 0
        while shared < min(len(whole), len(context)) and whole[shared] == context[shared]:
            shared += 1
        return [self.dictionary.eos()] + whole[:shared], whole[shared:]


def check_pieces(processor: spm.SentencePieceProcessor, dictionary: Dictionary,
                 spm_model: Path) -> None:
    """The dictionary's entries are pieces of the sentencepiece model that encoded the training
    data (fairseq-preprocess counted them in its output); a model of another corpus or size
    would turn much of a prompt into <unk> and still print an accuracy."""
    symbols = [s for s in dictionary.symbols[dictionary.nspecial:]
               if not s.startswith("madeupword")]  # fairseq's padding of the dictionary
    foreign = [s for s in symbols if processor.piece_to_id(s) == processor.unk_id()]
    if foreign:
        raise ValueError(
            f"{spm_model} is not the sentencepiece model of this dictionary: {len(foreign)} of "
            f"its {len(symbols)} entries ({', '.join(foreign[:3])}, ...) are not pieces of it; "
            f"give the model the training data was encoded with by --spm-model"
        )
