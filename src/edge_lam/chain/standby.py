"""What a standby gateway holds while another one is active, with no ROS.

A standby gets every request the active one gets (the same topic, the same service) but starts none. It mirrors the
active one's progress (every chunk it sends, on its progress topic): a request whose final chunk it saw is forgotten,
for the others it keeps the chunks already streamed, so that after a takeover it resumes each from where the caller
is (``GatewayCore.resume``) instead of answering it again. The active gateway sends a chunk to its caller before its
progress, so a chunk on the results topic can be the last a killed gateway sent: a standby reads that topic too, and a
chunk that comes twice (once on each) counts once, by its index.

Requests without a request_id cannot be matched to the active one's chunks (it names them itself): the active gateway
names them ``anon-...``, and each final of such a request that the standby does not know releases the oldest
anonymous request it holds. Which one is a guess, so a released service call is answered with an error, never with
someone else's answer; its caller has normally taken the active one's answer first (a client takes the first answer
to each call).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from edge_lam.chain.requests import Request, Result, ResultError, merge

__all__ = ["ANONYMOUS", "Held", "StandbyLedger"]

ANONYMOUS = "anon-"  # the start of the request_id an active gateway gives a request that came without one
RELEASED = ("the active gateway answered a call without a request_id; the standby cannot tell which one, so it "
            "answers this copy with an error (a client takes the first answer to its call)")


@dataclass(eq=False)
class Held:
    """A request a standby holds: whom to answer (a service call's waiter; None for the topic) and the chunks the
    active gateway streamed for it so far."""

    request: Request
    waiter: object = None
    chunks: list[Result] = field(default_factory=list)
    order: int = 0

    @property
    def streamed(self) -> tuple[int, ...]:
        return tuple(t for chunk in self.chunks for t in chunk.token_ids)


class StandbyLedger:
    """The requests a standby holds, matched against the active gateway's progress.

    ``remember`` bounds what is kept of requests it does not hold: the finals it saw (a request may reach the standby
    after the active one answered it) and the chunks of requests not seen yet. ``max_chunks`` bounds the chunks kept
    per request (a chunk carries at least one token, so the gateway's max_new_tokens_limit): beyond, non-final chunks
    are dropped, so no stream of progress messages costs more memory than that.
    """

    def __init__(self, remember: int = 256, max_chunks: int = 1024) -> None:
        self._held: dict[str, Held] = {}
        self._anonymous: deque[Held] = deque()
        self._finished: OrderedDict[str, Result] = OrderedDict()  # request id -> whole answer
        self._unclaimed: OrderedDict[str, list[Result]] = OrderedDict()  # chunks of requests not held (yet)
        self._remember = remember
        self._max_chunks = max_chunks
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._held) + len(self._anonymous)

    def hold(self, request: Request, waiter: object = None) -> Result | None:
        """Hold a request until the active gateway finishes it or this one takes over; the whole answer instead,
        when its final already came (a request the active one answered before it reached the standby)."""
        request_id = request.request_id
        if request_id in self._finished:
            return self._finished[request_id]
        held = Held(request, waiter, self._unclaimed.pop(request_id, []), next(self._order))
        if request_id:
            self._held[request_id] = held
        else:
            self._anonymous.append(held)
        return None

    def progress(self, chunk: Result) -> list[tuple[object, Result]]:
        """A chunk the active gateway sent: the waiters it answers (theirs is the active one's whole answer, or an
        error for an anonymous call it released). A chunk already seen (by its index, or the request's final) is
        nothing new."""
        if chunk.request_id in self._finished:
            return []
        held = self._held.get(chunk.request_id)
        chunks = held.chunks if held is not None else self._unclaimed.get(chunk.request_id, [])
        if chunk.chunk_index < len(chunks) or (len(chunks) >= self._max_chunks and not chunk.final):
            return []
        if held is None:
            chunks = self._unclaimed.setdefault(chunk.request_id, [])
            chunks.append(chunk)
            if chunk.final:
                del self._unclaimed[chunk.request_id]
                self._remember_final(chunk.request_id, merge(chunks))
                if chunk.request_id.startswith(ANONYMOUS) and self._anonymous:
                    released = self._anonymous.popleft()
                    return self._answers(released, Result("", final=True, finish_reason="error",
                                                          error_code=ResultError.INTERNAL, error_message=RELEASED))
            while len(self._unclaimed) > self._remember:
                self._unclaimed.popitem(last=False)
            return []
        held.chunks.append(chunk)
        if not chunk.final:
            return []
        del self._held[chunk.request_id]
        answer = merge(held.chunks)
        self._remember_final(chunk.request_id, answer)
        return self._answers(held, answer)

    def take_over(self) -> list[Held]:
        """Everything held, in the order it came; the ledger is empty after."""
        held = sorted([*self._held.values(), *self._anonymous], key=lambda h: h.order)
        self._held.clear()
        self._anonymous.clear()
        return held

    def _remember_final(self, request_id: str, answer: Result) -> None:
        self._finished[request_id] = answer
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)

    @staticmethod
    def _answers(held: Held, answer: Result) -> list[tuple[object, Result]]:
        return [] if held.waiter is None else [(held.waiter, answer)]
