"""Where a request's tokens are decided (AI Flow): the policies, their settings and how a request's options pick one.

- ``chain``: every token by the whole model, through every module of the chain.
- ``device``: the robot's early exit alone (module ``exit:L`` after the robot's blocks): no hop beyond the robot.
- ``cascade``: the exit decides a token when its probability reaches the threshold; otherwise that step goes on
  through the chain and the whole model decides it. Every step crosses the chain anyway, so the edge's caches stay
  whole, but a confident step does not wait for it.
- ``speculative``: a drafter proposes tokens (``ngram``: prompt lookup; ``exit``: the robot's exit, one step each),
  and the chain checks them all in one pass; greedy output is exactly the whole model's, and sampled output has its
  distribution (``edge_lam.model.sampling.verify_tokens``).

With ``allow_degraded`` (the default), a request whose chain step goes unanswered for ``degrade_after_s`` while the
robot's exit answers its probes is finished by the exit, and its result says ``degraded``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_lam.chain.requests import Options

__all__ = ["DRAFTERS", "MAX_DRAFT_TOKENS", "POLICIES", "Flow", "FlowSettings", "check"]

POLICIES = ("chain", "device", "cascade", "speculative")
DRAFTERS = ("ngram", "exit")


@dataclass(frozen=True)
class FlowSettings:
    """The gateway's defaults, for requests that leave a choice empty (gateway parameters)."""

    policy: str = "chain"
    cascade_threshold: float = 0.8
    draft_tokens: int = 4
    drafter: str = "ngram"
    degrade_after_s: float = 5.0
    exit: bool = False  # whether the chain has an early exit to probe (an exit topic is set)

    def __post_init__(self) -> None:
        problem = check(self.policy, self.drafter, self.cascade_threshold, self.draft_tokens)
        if problem:
            raise ValueError(problem)
        if not self.degrade_after_s > 0:
            raise ValueError(f"degrade_after_s must be > 0, got {self.degrade_after_s}")


@dataclass(frozen=True)
class Flow:
    """What one request does: its policy and settings, the request's own where it gave them."""

    policy: str
    cascade_threshold: float
    draft_tokens: int
    drafter: str
    allow_degraded: bool

    @classmethod
    def of(cls, options: Options, defaults: FlowSettings) -> Flow:
        return cls(options.policy or defaults.policy, options.cascade_threshold or defaults.cascade_threshold,
                   options.draft_tokens or defaults.draft_tokens, options.drafter or defaults.drafter,
                   options.allow_degraded)


MAX_DRAFT_TOKENS = 16  # a pass checks at most this many drafts: more rarely hold, and a rejected one costs compute


def check(policy: str, drafter: str, threshold: float, draft_tokens: int) -> str | None:
    """Why these flow options cannot be served, or None; empty strings and zeros mean the gateway's default."""
    if policy and policy not in POLICIES:
        return f"policy must be one of {list(POLICIES)} (or empty for the gateway's), got '{policy}'"
    if drafter and drafter not in DRAFTERS:
        return f"drafter must be one of {list(DRAFTERS)} (or empty for the gateway's), got '{drafter}'"
    if not 0.0 <= threshold <= 1.0:
        return f"cascade_threshold must be in [0, 1] (0 for the gateway's), got {threshold}"
    if not 0 <= draft_tokens <= MAX_DRAFT_TOKENS:
        return f"draft_tokens must be in [0, {MAX_DRAFT_TOKENS}] (0 for the gateway's), got {draft_tokens}"
    return None
