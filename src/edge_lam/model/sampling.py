"""Choosing the next token from logits: greedy, or temperature and top-p sampling; and verifying drafted tokens.

Sampling is seeded by (seed, step), not by a generator carried along, so any host holding the head draws the same
token for the same request step: a request replayed on a new placement gives the same answer.

Verification (speculative decoding) accepts a draft token the way standard speculative sampling does with a drafter
that proposes one token for sure (prompt lookup, or an exit's greedy choice): greedy keeps a draft when it is the
argmax; sampling keeps draft ``d`` with probability ``p(d)`` and otherwise draws from ``p`` with ``d`` removed. Either
way every token has exactly the distribution the whole model gives it without drafts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MIN_TEMPERATURE", "Sampling", "check_sampling", "choose_token", "verify_tokens"]

# Below this a temperature divides logits into infinities (1e-45 did): sampling that cold is greedy anyway.
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class Sampling:
    """How the head chooses the next token (GenerationOptions, as plain values)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


def check_sampling(do_sample: bool, temperature: float, top_p: float) -> str | None:
    """Why the sampler cannot honour these options, or None. Greedy ignores temperature and top_p."""
    if not do_sample:
        return None
    if not math.isfinite(temperature) or not (temperature == 0.0 or temperature >= MIN_TEMPERATURE):
        return f"temperature must be 0 (greedy) or a finite value >= {MIN_TEMPERATURE} when sampling, got {temperature}"
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        return f"top_p must be in (0, 1], got {top_p}"
    return None


def _probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution to draw from; one-hot on the argmax when the options or the logits leave no proper one
    (a packet sent straight to the head is not checked by the gateway, and a cold temperature overflows)."""
    logits = logits.float()
    probs = None
    if math.isfinite(temperature) and temperature >= MIN_TEMPERATURE and math.isfinite(top_p) and top_p > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            probs = probs / probs.sum()  # verification compares a draft's probability with a uniform draw
    if probs is None or not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
        probs = torch.zeros_like(logits)
        probs[int(torch.argmax(torch.nan_to_num(logits, nan=-math.inf)))] = 1.0
    return probs


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def choose_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, seed: int,
                 step: int) -> int:
    """The next token id from a [vocab] logits vector."""
    if not do_sample:
        return int(torch.argmax(logits))
    return int(torch.multinomial(_probs(logits, temperature, top_p), 1, generator=_generator(seed, step)))


def verify_tokens(logits: torch.Tensor, drafts: Sequence[int], sampling: Sampling, step: int) -> list[int]:
    """The drafts the whole model keeps and its own next token: ``logits`` [len(drafts) + 1, vocab] are the model's
    at the position before each draft and after the last one; ``step`` is the request step of the first draft."""
    if logits.shape[0] != len(drafts) + 1:
        raise ValueError(f"{len(drafts)} drafts need {len(drafts) + 1} rows of logits, got {logits.shape[0]}")
    kept: list[int] = []
    for i, draft in enumerate(drafts):
        if not sampling.do_sample:
            token = int(torch.argmax(logits[i]))
            if token != draft:
                return [*kept, token]
        else:
            probs = _probs(logits[i], sampling.temperature, sampling.top_p)
            generator = _generator(sampling.seed, step + i)
            if float(torch.rand((), generator=generator)) >= float(probs[draft]):
                rest = probs.clone()
                rest[draft] = 0.0
                return [*kept, int(torch.multinomial(rest, 1, generator=generator))]
        kept.append(draft)
    last = len(drafts)
    return [*kept, choose_token(logits[last], sampling.do_sample, sampling.temperature, sampling.top_p, sampling.seed,
                                step + last)]
