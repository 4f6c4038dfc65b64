"""Prompt lookup: drafts for speculative decoding taken from tokens already seen, at no compute.

What follows the session's last tokens the last time they appeared (in the session, else in the gateway's recent
answers) is a good guess for what follows now: answers quote their prompts, and a robot's reports repeat each other
("The robot sees a ...", "is navigating through the ..."). The whole model verifies every draft
(``edge_lam.model.sampling.verify_tokens``): a wrong guess costs a longer pass, never a different answer. A pass
checking k drafts costs about 1 + k/5 single-token passes on a CPU, so drafts come only from a match of at least
two tokens: a one-token match is right too rarely to pay for itself (measured in doc/flow.md).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

__all__ = ["AnswerHistory", "prompt_lookup"]


def prompt_lookup(tokens: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 2,
                  history: Sequence[int] = ()) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix of ``tokens`` (of
    ``min_ngram`` to ``max_ngram`` tokens) found again in ``tokens``, else in ``history``; empty when none is."""
    if k <= 0:
        return []
    tokens = list(tokens)
    for corpus, before in ((tokens, len(tokens)), (list(history), len(history) + 1)):
        for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
            suffix = tokens[-n:]
            for start in range(before - n - 1, -1, -1):  # the latest occurrence (before the suffix itself)
                if corpus[start:start + n] == suffix:
                    return corpus[start + n:start + n + k]
    return []


class AnswerHistory:
    """The gateway's last ``size`` answers, as one token sequence to look drafts up in (bounded memory)."""

    def __init__(self, size: int = 32) -> None:
        self._answers: collections.deque[tuple[int, ...]] = collections.deque(maxlen=size)

    def add(self, answer: Sequence[int]) -> None:
        if answer:
            self._answers.append(tuple(answer))

    @property
    def tokens(self) -> list[int]:
        return [t for answer in self._answers for t in answer]
