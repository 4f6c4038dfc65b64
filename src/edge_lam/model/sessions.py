"""Per-session KV caches of one block-range module: created on a session's first packet, checked against the
position each packet claims, cut back when a packet truncates (drafts a verification rejected), expired when idle,
and dropped so the gateway can rebuild them by replaying.

The store keeps its sessions in the order they were last used, so the shard can drop the least recently used one
when a bound on sessions or KV bytes is reached; the gateway replays such a session when it is asked again. Bytes are
counted from the tokens held (``kv_bytes_for``), which a dropped session gives back at once."""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Session", "SessionLost", "SessionStore", "give_back_memory"]


def give_back_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot (not glibc).

    A released cache's tensors go back to glibc's heap, not to the system: 100 sessions of 128 tokens on a 10-layer
    SmolLM2 shard left 195 of 244 MB in the process after release, and ``malloc_trim`` gave it all back."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the symbols the process already has (``find_library`` would run ldconfig)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class SessionLost(LookupError):
    """The module has no cache for the session at the packet's position; the session must be replayed."""


@dataclass
class Session:
    cache: Any
    length: int = 0                 # tokens the cache holds
    last_used: float = field(default=0.0)


class SessionStore:
    """KV caches by session id, least recently used first. ``clock`` is injectable so expiry can be tested without
    waiting; ``idle_timeout_s`` may be changed at any time."""

    def __init__(self, new_cache: Callable[[], Any], idle_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 kv_bytes_for: Callable[[int], int] = lambda tokens: 0) -> None:
        """``kv_bytes_for``: the bytes a session of that many tokens holds."""
        self._new_cache = new_cache
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self.kv_bytes_for = kv_bytes_for
        self._sessions: dict[str, Session] = {}

    @property
    def kv_bytes(self) -> int:
        """KV-cache bytes the sessions hold."""
        return sum(self.kv_bytes_for(s.length) for s in self._sessions.values())

    def least_recent(self) -> list[str]:
        """Session ids, least recently used first."""
        return list(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def checkout(self, session_id: str, position: int, reset: bool, truncate: bool = False) -> Session:
        """The session to extend at ``position``: new when reset (or unknown at position 0), else the cached one,
        cut back to ``position`` first when ``truncate`` (its cache must have ``crop(-n)``, as transformers' do)."""
        if reset:
            self._sessions.pop(session_id, None)
        session = self._sessions.get(session_id)
        if session is None:
            if position != 0:
                raise SessionLost(f"session '{session_id}' is not cached here (asked for position {position})")
            session = self._sessions[session_id] = Session(self._new_cache())
        elif truncate and position < session.length:
            try:
                session.cache.crop(position - session.length)
            except RuntimeError as err:  # a sliding-window layer past its window no longer holds what went before
                del self._sessions[session_id]
                raise SessionLost(f"session '{session_id}' cannot be cut back to {position} tokens here: {err}") \
                    from err
            session.length = position
        elif position != session.length:
            raise SessionLost(
                f"session '{session_id}' holds {session.length} tokens here, the packet starts at {position}"
            )
        session.last_used = self._clock()
        self._sessions[session_id] = self._sessions.pop(session_id)  # now the most recently used
        return session

    def drop(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    def expire(self) -> list[str]:
        """Drop the sessions idle for longer than the timeout; return their ids."""
        now = self._clock()
        idle = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_timeout_s]
        for sid in idle:
            del self._sessions[sid]
        return idle
