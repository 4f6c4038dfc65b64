"""Text to the language model's own token ids, so text needs no second vocabulary between robot and model."""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from edge_lam.encoders.tokens import Encoded, EncoderInputError, Vocabulary


class TextEncoder:
    """Tokenizes text with the LAM's tokenizer; the vocabulary words are the decoded text of each id."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str, max_tokens: int = 512) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self._tokenizer = tokenizer
        self._max_tokens = max_tokens
        self.vocabulary = Vocabulary(
            encoder=name, version="1", words=tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
        )

    def encode(self, text: str) -> Encoded:
        if not text.strip():
            raise EncoderInputError("empty text")
        ids = self._tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self._max_tokens:
            raise EncoderInputError(f"text of {len(ids)} tokens is longer than max_tokens={self._max_tokens}")
        return Encoded(ids=np.asarray(ids, dtype=np.uint32))
