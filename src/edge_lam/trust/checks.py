"""What a receiver accepts: a signature by a known signer, valid over the message's bytes, stamped within the
allowed clock skew, strictly newer than the last one accepted from that signer on that channel (so a recorded
message replayed later is refused), and, where the channel binds an identity (an advert's host, a chain hop's
upstream host), by the signer that identity names. Every verdict is counted per channel; ``now_ns`` is an argument,
so tests need no clock."""

from __future__ import annotations

import collections
import dataclasses
import enum
import threading

from edge_lam.trust.keys import SigningKey, TrustStore

__all__ = ["SIGNATURE_BYTES", "Signed", "Stamper", "Verdict", "Verifier"]

SIGNATURE_BYTES = 64  # of every Ed25519 signature


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    UNSIGNED = "unsigned"
    UNKNOWN_SIGNER = "unknown signer"
    BAD_SIGNATURE = "bad signature"
    STALE = "stale or replayed"
    WRONG_IDENTITY = "wrong identity"


@dataclasses.dataclass(frozen=True)
class Signed:
    """What a message's signature says: who, when (wall clock ns at signing) and the Ed25519 signature."""

    signer: str
    stamp_ns: int
    signature: bytes


class Stamper:
    """A signer's stamps: its wall clock, but strictly increasing, so that two messages signed within one clock tick
    (or across a clock step back) are not taken as a replay of each other."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._last = 0
        self._lock = threading.Lock()

    def stamp(self, now_ns: int) -> int:
        with self._lock:
            self._last = max(now_ns, self._last + 1)
            return self._last


class Verifier:
    """A receiver's checks and counts. ``max_clock_skew_s`` bounds how far a stamp may be from the receiver's clock;
    ``check(..., max_age=False)`` skips the bound into the past, for latched state (a plan) that a late joiner must
    still accept, where strictly-newer alone orders it."""

    def __init__(self, store: TrustStore, max_clock_skew_s: float) -> None:
        self.store = store
        self.max_skew_ns = int(max_clock_skew_s * 1e9)
        self.counts: collections.Counter[tuple[str, Verdict]] = collections.Counter()
        self._newest: dict[tuple[str, str], int] = {}  # (channel, signer) -> stamp of the last accepted
        self._lock = threading.Lock()

    def check(self, channel: str, signed: Signed, data: bytes, now_ns: int, identity: str | None = None,
              max_age: bool = True) -> Verdict:
        """The verdict on one message; ``data`` is its bytes with the signature emptied, ``identity`` the signer the
        channel requires (None: any trusted signer)."""
        verdict = self._verdict(channel, signed, data, now_ns, identity, max_age)
        with self._lock:
            self.counts[channel, verdict] += 1
        return verdict

    def _verdict(self, channel: str, signed: Signed, data: bytes, now_ns: int, identity: str | None,
                 max_age: bool) -> Verdict:
        if not signed.signer or not signed.signature:
            return Verdict.UNSIGNED
        if not self.store.knows(signed.signer):
            return Verdict.UNKNOWN_SIGNER
        if not self.store.valid(signed.signer, data, signed.signature):
            return Verdict.BAD_SIGNATURE
        if identity is not None and signed.signer != identity:
            return Verdict.WRONG_IDENTITY
        if signed.stamp_ns > now_ns + self.max_skew_ns or (max_age and signed.stamp_ns < now_ns - self.max_skew_ns):
            return Verdict.STALE
        with self._lock:
            key = (channel, signed.signer)
            if signed.stamp_ns <= self._newest.get(key, -1):
                return Verdict.STALE
            self._newest[key] = signed.stamp_ns
        return Verdict.ACCEPTED

    def refused(self, channel: str | None = None) -> dict[str, int]:
        """Counts of refusals by reason (of one channel, or all), for diagnostics."""
        totals: collections.Counter[str] = collections.Counter()
        with self._lock:
            for (ch, verdict), n in self.counts.items():
                if verdict is not Verdict.ACCEPTED and (channel is None or ch == channel):
                    totals[verdict.value] += n
        return dict(totals)
