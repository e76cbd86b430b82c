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
        return cls(spm.SentencePieceProcessor(model_file=str(spm_model)), dictionary)

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
