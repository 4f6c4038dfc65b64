"""Choosing the next token from the last position's logits: greedy, or temperature and top-p sampling.

Sampling is seeded by (seed, step), not by a generator carried along, so any host holding the head draws the same
token for the same request step: a request replayed on a new placement gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Sampling", "choose_token"]


@dataclass(frozen=True)
class Sampling:
    """How the head chooses the next token (GenerationOptions, as plain values)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


def choose_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, seed: int,
                 step: int) -> int:
    """The next token id from a [vocab] logits vector."""
    if not do_sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return int(torch.multinomial(probs, 1, generator=generator))
