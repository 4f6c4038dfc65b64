"""Text to the language model's own token ids, so text needs no second vocabulary between robot and model."""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary

MAX_CHARS = 8192  # no tokenizer here makes fewer tokens than a tenth of the characters of ordinary text


class TextEncoder:
    """Tokenizes text with the LAM's tokenizer; the vocabulary words are the decoded text of each id.

    Text longer than ``max_chars`` is refused before it is tokenized: tokenizing costs time and memory in the
    length of the text (a 10 MB string took seconds and a gigabyte), so ``max_tokens`` alone bounds nothing.
    Both bounds may change between calls.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str, max_tokens: int = 512,
                 max_chars: int = MAX_CHARS) -> None:
        if max_tokens < 1 or max_chars < 1:
            raise ValueError(f"max_tokens and max_chars must be at least 1, got {max_tokens} and {max_chars}")
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.vocabulary = Vocabulary(
            encoder=name, version="1", words=tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
        )

    def encode(self, text: str) -> Encoded:
        if len(text) > self.max_chars:
            raise EncoderInputError(f"text of {len(text)} characters is longer than max_text_chars={self.max_chars}: "
                                    "refused untokenized")
        if not text.strip():
            raise EncoderInputError("empty text")
        ids = self._tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.max_tokens:
            raise EncoderInputError(f"text of {len(ids)} tokens is longer than max_tokens={self.max_tokens}")
        return Encoded(ids=np.asarray(ids, dtype=np.uint32))
