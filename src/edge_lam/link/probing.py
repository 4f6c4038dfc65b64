"""Link estimates between host agents from round trips, and emulated links that replace them.

An agent sends a peer a small probe; on its reply it sends a bulk one; replies are small. The one-way latency is
half the small round trip; the bandwidth is the bulk probe's extra bytes over its extra time. Across real links
three things matter (measured between emulated hosts, doc/fleet.md "Links"):

- The bulk probe is sized to take about ``BULK_TARGET_S`` on the link as last estimated (``MIN_BULK_BYTES`` to
  ``MAX_BULK_BYTES``): a fixed 256 KB took 0.4 s of a 5 Mbit/s link per round, filled a router's queue, and its
  retransmissions held up the small probes behind it, which then made the link look slow and wide.
- Estimates come from the best of the last ``ROUNDS_KEPT`` rounds (least small round trip, greatest bandwidth):
  queueing in either agent's executor, another agent's bulk probe on the same link and retransmissions after a
  loss only ever add time. So a faster link shows at once and a slower one once the faster rounds have left the
  window. Dropping the window on two clearly worse rounds in a row was tried: an agent loading its shards (or
  running them: they share its process) answers late for a few rounds, and the plan then moved modules off the
  robot because it had been given them, and back.
- Each peer's next round starts after a period drawn from 0.5 to 1.5 probe periods, so that two agents started
  together do not probe each other in step, each one's bulk probe delaying the other's replies.

On the wire (the node's part) a probe is a TensorList whose header names the sender (frame_id) and the send time
(stamp, which the reply echoes and which identifies the probe); its one tensor is named after the addressee.
Pure bookkeeping here: no rclpy, times passed in.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Iterable, Sequence

from edge_lam.descriptors import Link

__all__ = [
    "BULK_TARGET_S",
    "MAX_BULK_BYTES",
    "MIN_BULK_BYTES",
    "ROUNDS_KEPT",
    "SMALL_PROBE_BYTES",
    "LinkProber",
    "Round",
    "bulk_bytes_for",
    "estimate",
    "parse_emulated_links",
]

SMALL_PROBE_BYTES = 64
MIN_BULK_BYTES = 16 * 1024  # a few milliseconds at 50 Mbit/s: still above an executor's scheduling noise
MAX_BULK_BYTES = 256 * 1024  # below Fast DDS's default 512 KB shared-memory segment: one piece, no fragments
BULK_TARGET_S = 0.05  # 5 % of a 1 s probe period on the link, and well inside a router queue's half second
ROUNDS_KEPT = 5
_MIN_TRANSFER_S = 1e-4  # below what two executors can time: a bulk probe no slower than the small one (jitter)
#                         still gets a finite rate (16 kB in 0.1 ms: 1.3 Gbit/s), not one in the terabits


@dataclasses.dataclass(frozen=True)
class Round:
    """One probe round: the small and the bulk round trips, and how large the bulk probe was."""

    small_rtt_s: float
    bulk_rtt_s: float
    bulk_bytes: int

    def bandwidth_bps(self, small_rtt_s: float) -> float:
        """The bulk probe's extra bytes over its extra time beside a small round trip of ``small_rtt_s``."""
        return (self.bulk_bytes - SMALL_PROBE_BYTES) * 8 / max(self.bulk_rtt_s - small_rtt_s, _MIN_TRANSFER_S)


def estimate(src: str, peer: str, rounds: Iterable[Round]) -> Link:
    """Latency from the least small round trip, bandwidth from the best bulk one beside it."""
    rounds = list(rounds)
    small_rtt_s = min(r.small_rtt_s for r in rounds)
    return Link(src, peer, small_rtt_s / 2, max(r.bandwidth_bps(small_rtt_s) for r in rounds))


def bulk_bytes_for(link: Link | None) -> int:
    """The bulk probe for a link estimated as ``link``: about ``BULK_TARGET_S`` of its bandwidth, within bounds."""
    if link is None:
        return MIN_BULK_BYTES
    return int(min(MAX_BULK_BYTES, max(MIN_BULK_BYTES, link.bandwidth_bps * BULK_TARGET_S / 8)))


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
    bulk_bytes: int  # 0 for the small probe
    sent_at_s: float
    small_rtt_s: float | None = None


class LinkProber:
    """One probe round in flight per peer at most, a new one every ``period_s`` or so (see the module's notes); a
    probe unanswered for ``timeout_s`` (one period unless given) is given up (a later reply to it is ignored), so a
    lost message or a dead peer costs nothing but that estimate's freshness."""

    def __init__(self, period_s: float, host_id: str = "", *, timeout_s: float | None = None,
                 rng: random.Random | None = None) -> None:
        self._period_s = period_s
        self._timeout_s = period_s if timeout_s is None else timeout_s
        self._host_id = host_id
        self._rng = rng or random.Random()
        self._flights: dict[str, _Flight] = {}
        self._next_round_s: dict[str, float] = {}
        self._rounds: dict[str, collections.deque[Round]] = {}
        self.measures: dict[str, Link] = {}
        self.measured_at_ns: dict[str, int] = {}  # ROS time of each peer's last estimate

    def due(self, peer: str, now_s: float) -> bool:
        """Whether a new round may start: nothing in flight to ``peer`` (or it timed out) and its time has come."""
        flight = self._flights.get(peer)
        if flight is not None:
            return now_s - flight.sent_at_s > self._timeout_s
        return now_s >= self._next_round_s.get(peer, float("-inf"))

    def bulk_bytes(self, peer: str) -> int:
        """Size of the next bulk probe to ``peer``."""
        return bulk_bytes_for(self.measures.get(peer))

    def sent(self, peer: str, seq: int, now_s: float, *, bulk: bool = False) -> int:
        """A probe went out; a bulk one carries on the round that the small one's reply started. Returns the
        probe's size in bytes (the bulk one's from ``bulk_bytes``)."""
        flight = self._flights.get(peer)
        if not bulk and flight is not None and flight.bulk_bytes and flight.small_rtt_s is not None:
            # A bulk probe given up: it took longer than the time-out, so the link is at most that wide. Recorded as
            # such, so that the next bulk probe is sized for it; otherwise a link slowed below a bulk probe per
            # time-out would never be measured again.
            self._record(peer, Round(flight.small_rtt_s, self._timeout_s, flight.bulk_bytes))
        nbytes = self.bulk_bytes(peer) if bulk else 0
        small_rtt_s = flight.small_rtt_s if bulk and flight is not None else None
        self._flights[peer] = _Flight(seq, nbytes, now_s, small_rtt_s)
        return nbytes or SMALL_PROBE_BYTES

    def answered(self, peer: str, seq: int, now_s: float, measured_at_ns: int) -> bool:
        """Record a reply; True when the bulk probe should go out next. Stale or unknown replies are ignored."""
        flight = self._flights.get(peer)
        if flight is None or flight.seq != seq:
            return False
        rtt_s = now_s - flight.sent_at_s
        if not flight.bulk_bytes:
            flight.small_rtt_s = rtt_s
            return True
        del self._flights[peer]
        self._next_round_s[peer] = now_s + self._period_s * self._rng.uniform(0.5, 1.5)
        if flight.small_rtt_s is not None:
            self._record(peer, Round(flight.small_rtt_s, rtt_s, flight.bulk_bytes))
            self.measured_at_ns[peer] = measured_at_ns
        return False

    def _record(self, peer: str, done: Round) -> None:
        rounds = self._rounds.setdefault(peer, collections.deque(maxlen=ROUNDS_KEPT))
        rounds.append(done)
        self.measures[peer] = estimate(self._host_id, peer, rounds)

    def forget(self, peer: str) -> None:
        self._flights.pop(peer, None)
        self._next_round_s.pop(peer, None)
        self._rounds.pop(peer, None)
        self.measures.pop(peer, None)
        self.measured_at_ns.pop(peer, None)
