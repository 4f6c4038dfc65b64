"""When a frame that enters one direction of an emulated link leaves it, or that it is dropped: the forwarder's
decisions, with the clock passed in so they can be checked without one.

A frame first waits for the wire (a token bucket of the link's rate: the wire is busy for the frame's bits over the
rate, after the frames before it), then flies for the latency plus a jitter drawn uniformly from +-jitter. Frames
leave in the order they came (a frame never leaves before the one ahead of it): real links reorder rarely and
DDS copes with it anyway, so jitter here spreads delays without reordering. A rate-limited direction holds at most
``BACKLOG_S`` of frames waiting for the wire, as a router's queue would; more are dropped (tail drop).
"""

from __future__ import annotations

import random

from edge_lam.hosts.links import LinkShape

__all__ = ["BACKLOG_S", "DirectionShaper"]

BACKLOG_S = 0.5


class DirectionShaper:
    """One direction of one host's link. ``admit`` says when a frame leaves, or None when it is dropped."""

    def __init__(self, shape: LinkShape, rng: random.Random) -> None:
        self.shape = shape
        self._rng = rng
        self._wire_free_at = float("-inf")
        self._last_release = float("-inf")

    def reshape(self, shape: LinkShape) -> None:
        """Change the link for frames admitted from now on; frames already admitted keep their times."""
        self.shape = shape

    def admit(self, now: float, nbytes: int) -> float | None:
        """The time (same clock as ``now``, seconds) at which a frame of ``nbytes`` arriving at ``now`` leaves."""
        shape = self.shape
        if shape.loss and self._rng.random() < shape.loss:
            return None
        sent = now
        if shape.rate_bps:
            start = max(now, self._wire_free_at)
            if start - now > BACKLOG_S:
                return None
            sent = start + nbytes * 8.0 / shape.rate_bps
            self._wire_free_at = sent
        delay_ms = shape.latency_ms
        if shape.jitter_ms:
            delay_ms = max(delay_ms + self._rng.uniform(-shape.jitter_ms, shape.jitter_ms), 0.0)
        release = max(sent + delay_ms / 1e3, self._last_release)
        self._last_release = release
        return release
