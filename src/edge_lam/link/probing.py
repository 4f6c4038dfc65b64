"""Link estimates between host agents from round trips, and emulated links that replace them.

An agent sends a peer a small probe; on its reply it sends a bulk one (``BULK_PROBE_BYTES``); replies are small.
The one-way latency is half the small round trip; the bandwidth is the bulk probe's extra bytes over its extra
time. Both come from the least round trips of the last ``ROUNDS_KEPT`` rounds: queueing in either agent's executor
only ever adds time, and on a fast link (shared memory) that noise is larger than the bulk transfer itself.

On the wire (the node's part) a probe is a TensorList whose header names the sender (frame_id) and the send time
(stamp, which the reply echoes and which identifies the probe); its one tensor is named after the addressee.
Pure bookkeeping here: no rclpy, times passed in.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from edge_lam.descriptors import Link

__all__ = [
    "BULK_PROBE_BYTES",
    "ROUNDS_KEPT",
    "SMALL_PROBE_BYTES",
    "LinkProber",
    "estimate",
    "parse_emulated_links",
]

SMALL_PROBE_BYTES = 64
BULK_PROBE_BYTES = 256 * 1024  # below Fast DDS's default 512 KB shared-memory segment: one piece, no fragments
ROUNDS_KEPT = 5
_MIN_TRANSFER_S = 1e-6  # a bulk probe that came back no slower than the small one (jitter) still gets a finite rate


def estimate(src: str, peer: str, small_rtt_s: float, bulk_rtt_s: float, bulk_bytes: int = BULK_PROBE_BYTES,
             small_bytes: int = SMALL_PROBE_BYTES) -> Link:
    """Latency from the small round trip, bandwidth from what the bulk one took longer for its extra bytes."""
    transfer_s = max(bulk_rtt_s - small_rtt_s, _MIN_TRANSFER_S)
    return Link(src, peer, small_rtt_s / 2, (bulk_bytes - small_bytes) * 8 / transfer_s)


def parse_emulated_links(specs: Sequence[str], src: str = "") -> dict[str, Link]:
    """``["edge_0:0.02:100e6"]`` (PEER:LATENCY_S:BANDWIDTH_BPS) -> the link from ``src`` to each peer; ValueError if
    one is malformed or a peer is named twice."""
    links: dict[str, Link] = {}
    for spec in specs:
        try:
            link = Link.parse(spec, src)
        except ValueError as err:
            raise ValueError(f"emulated {err}") from None
        if link.dst in links:
            raise ValueError(f"emulated link '{spec}': peer '{link.dst}' is named twice")
        links[link.dst] = link
    return links


@dataclasses.dataclass
class _Flight:
    seq: int
    bulk: bool
    sent_at_s: float
    small_rtt_s: float | None = None


class LinkProber:
    """One probe in flight per peer at most; a probe unanswered for ``timeout_s`` is given up (a later reply to
    it is ignored), so a lost message or a dead peer costs nothing but that estimate's freshness."""

    def __init__(self, timeout_s: float, host_id: str = "") -> None:
        self._timeout_s = timeout_s
        self._host_id = host_id
        self._flights: dict[str, _Flight] = {}
        self._rounds: dict[str, collections.deque[tuple[float, float]]] = {}  # (small, bulk) round trips
        self.measures: dict[str, Link] = {}
        self.measured_at_ns: dict[str, int] = {}  # ROS time of each peer's last estimate

    def due(self, peer: str, now_s: float) -> bool:
        """Whether a new round may start: nothing in flight to ``peer``, or it timed out."""
        flight = self._flights.get(peer)
        return flight is None or now_s - flight.sent_at_s > self._timeout_s

    def sent(self, peer: str, seq: int, now_s: float, *, bulk: bool = False) -> None:
        """A probe went out; a bulk one carries on the round that the small one's reply started."""
        small_rtt_s = self._flights[peer].small_rtt_s if bulk and peer in self._flights else None
        self._flights[peer] = _Flight(seq, bulk, now_s, small_rtt_s)

    def answered(self, peer: str, seq: int, now_s: float, measured_at_ns: int) -> bool:
        """Record a reply; True when the bulk probe should go out next. Stale or unknown replies are ignored."""
        flight = self._flights.get(peer)
        if flight is None or flight.seq != seq:
            return False
        rtt_s = now_s - flight.sent_at_s
        if not flight.bulk:
            flight.small_rtt_s = rtt_s
            return True
        del self._flights[peer]
        if flight.small_rtt_s is not None:
            rounds = self._rounds.setdefault(peer, collections.deque(maxlen=ROUNDS_KEPT))
            rounds.append((flight.small_rtt_s, rtt_s))
            self.measures[peer] = estimate(self._host_id, peer, min(s for s, _ in rounds),
                                           min(b for _, b in rounds))
            self.measured_at_ns[peer] = measured_at_ns
        return False

    def forget(self, peer: str) -> None:
        self._flights.pop(peer, None)
        self._rounds.pop(peer, None)
        self.measures.pop(peer, None)
        self.measured_at_ns.pop(peer, None)
