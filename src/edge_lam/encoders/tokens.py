"""What every encoder core returns, and the vocabulary that gives its ids a meaning.

Kept free of ROS so the cores can be tested and benchmarked alone; the encoder nodes turn an ``Encoded`` into a
``SemanticTokens`` message and publish the ``Vocabulary`` once, latched, next to the tokens.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


class EncoderInputError(ValueError):
    """A sensor message an encoder can't read (wrong encoding, zero or truncated size, NaNs, mismatched sizes)."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The words of one encoder's token ids: ``words[i]`` is what id ``i`` means."""

    encoder: str
    version: str
    words: tuple[str, ...]

    def word(self, token_id: int) -> str:
        return self.words[token_id] if 0 <= token_id < len(self.words) else f"<unknown {token_id}>"

    def describe(self, token_ids) -> list[str]:
        return [self.word(int(i)) for i in token_ids]


@dataclasses.dataclass
class Encoded:
    """Tokens made from one input.

    ``ids`` are uint32, flat in row-major order; ``shape`` gives their grid when they form one (else empty);
    ``scores`` is one float per id or None; ``embedding`` is a [rows, dim] float32 matrix or None.
    """

    ids: np.ndarray
    shape: tuple[int, ...] = ()
    scores: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.uint32).reshape(-1)
        if self.shape and math.prod(int(n) for n in self.shape) != self.ids.size:  # numpy's product would wrap
            raise ValueError(f"token grid {self.shape} does not hold {self.ids.size} ids")
        if self.scores is not None:
            self.scores = np.ascontiguousarray(self.scores, dtype=np.float32).reshape(-1)
            if self.scores.size != self.ids.size:
                raise ValueError(f"{self.scores.size} scores for {self.ids.size} ids")
        if self.embedding is not None:
            self.embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)
            if self.embedding.ndim == 1:
                self.embedding = self.embedding[None, :]
            if self.embedding.ndim != 2:
                raise ValueError(f"embedding must be [rows, dim], got shape {self.embedding.shape}")
