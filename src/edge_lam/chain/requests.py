"""What goes in and out of the gateway core, as plain values: requests and their results, the chain steps that serve
them and what the chain's last module sends back, and the log lines the node writes.

``edge_lam.wire.requests`` and ``edge_lam.wire.chain`` convert these to and from InferenceRequest, InferenceResult
and ChainPacket; the error codes here carry the messages' values (a test compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

from edge_lam.descriptors import Stage

__all__ = ["CANCELLED", "DRAFTS", "ChainError", "ChainOutput", "ChainStep", "Log", "Options", "Request", "Result",
           "ResultError", "Route", "Source", "merge"]

CANCELLED = "cancelled"  # the finish reason of a request its caller cancelled
DRAFTS = "draft_ids"  # the ChainPacket tensor that carries a verification step's drafts to the head


class ResultError(IntEnum):
    """InferenceResult's ERROR_* constants."""

    NONE = 0
    BAD_REQUEST = 1
    UNKNOWN_SESSION = 2
    MODULE_UNAVAILABLE = 3
    TIMEOUT = 4
    INTERNAL = 5
    BUSY = 6


class ChainError(IntEnum):
    """ChainPacket's ERROR_* constants."""

    NONE = 0
    BAD_INPUT = 1
    SESSION_LOST = 2
    INTERNAL = 3


class Route(IntEnum):
    """ChainPacket's ROUTE_* constants: how far a step goes."""

    CHAIN = 0  # through every module; the head answers
    EXIT = 1  # up to the early exit, which answers; the modules after it see nothing
    CHAIN_AND_EXIT = 2  # the exit answers early and the step goes on through the chain, whose head answers too


class Source(IntEnum):
    """InferenceResult's SOURCE_* constants: where a token was decided."""

    CHAIN = 0
    EXIT = 1
    DRAFT_NGRAM = 2
    DRAFT_EXIT = 3


@dataclass(frozen=True)
class Options:
    """How to generate (GenerationOptions; the defaults are the message's)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    apply_chat_template: bool = True
    policy: str = ""  # chain, device, cascade or speculative; empty: the gateway's default
    allow_degraded: bool = True
    cascade_threshold: float = 0.0  # 0: the gateway's
    draft_tokens: int = 0  # 0: the gateway's
    drafter: str = ""  # ngram or exit; empty: the gateway's
    adapter: str = ""  # LoRA adapter the shards answer with, by name; empty: none (the base weights)


@dataclass(frozen=True)
class Request:
    """A request to generate text: a prompt, or token ids used as they are."""

    request_id: str = ""
    session_id: str = ""
    keep_session: bool = False
    model_id: str = ""
    prompt: str = ""
    input_token_ids: tuple[int, ...] = ()
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class Result:
    """One chunk of an answer; the final one carries the finish reason, the error and where the time went.

    ``reply_to`` is whatever the node gave with the request to tell where its results go; the core only copies it.
    """

    request_id: str
    chunk_index: int = 0
    token_ids: tuple[int, ...] = ()
    token_sources: tuple[Source, ...] = ()
    text: str = ""
    final: bool = False
    finish_reason: str = ""
    error_code: ResultError = ResultError.NONE
    error_message: str = ""
    session_id: str = ""
    time_to_first_token_s: float = 0.0
    timings: tuple[Stage, ...] = ()
    reply_to: object = None
    policy: str = ""
    degraded: bool = False
    drafted: int = 0
    accepted: int = 0
    verify_passes: int = 0


@dataclass(frozen=True)
class ChainStep:
    """A packet for the chain's first module: token ids at ``position`` of a chain session, or its release.

    ``truncate`` cuts the caches back to ``position`` first; ``draft_ids`` (with ``verify``) are the last of
    ``input_ids``, drafts for the head to check; ``route`` says how far the step goes."""

    session_id: str
    request_id: str = ""
    step: int = 0
    position: int = 0
    reset: bool = False
    release: bool = False
    input_ids: tuple[int, ...] = ()
    options: Options = field(default_factory=Options)
    truncate: bool = False
    verify: bool = False
    draft_ids: tuple[int, ...] = ()
    route: Route = Route.CHAIN


@dataclass(frozen=True)
class ChainOutput:
    """A packet from the chain's last module (or its early exit): the next token (after a verification, the drafts
    kept and the next token), an error a module reported, or a release passed on.

    ``problem`` says what is wrong with the packet's tensors when it has no error and no tokens; ``confidence`` is an
    exit's probability of its token (1.0 from the head).
    """

    request_id: str
    session_id: str
    step: int = 0
    release: bool = False
    error_code: ChainError = ChainError.NONE
    error_message: str = ""
    tokens: tuple[int, ...] = ()
    problem: str = ""
    timings: tuple[Stage, ...] = ()
    confidence: float = 1.0


@dataclass(frozen=True)
class Log:
    """A line for the node's logger: ``level`` is info, warning or error."""

    level: str
    text: str


def merge(chunks: Sequence[Result]) -> Result:
    """One final result holding every chunk's tokens and text (what a caller that waits for the whole answer gets)."""
    return replace(chunks[-1], chunk_index=0, token_ids=tuple(t for c in chunks for t in c.token_ids),
                   token_sources=tuple(s for c in chunks for s in c.token_sources),
                   text="".join(c.text for c in chunks))
