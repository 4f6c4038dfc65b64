"""Prompt lookup: drafts for speculative decoding taken from the session's own tokens, at no compute.

A robot's reports repeat what their prompts say (sensor words, numbers, the instruction's phrasing), so the tokens
that followed the last few tokens the last time they appeared are a good guess for what follows now. The whole model
verifies every draft (``edge_lam.model.sampling.verify_tokens``): a wrong guess costs a slightly longer pass, never a
different answer.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["prompt_lookup"]


def prompt_lookup(tokens: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix of ``tokens`` (of at most
    ``max_ngram`` tokens) found again; empty when no suffix repeats."""
    if k <= 0:
        return []
    tokens = list(tokens)
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # the latest occurrence before the suffix itself
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []
