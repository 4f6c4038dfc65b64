"""The node's side of an emulated host and link (``link.emulation``): hold packets, and compute and publish each
when its DelayLine says, from a one-shot timer instead of a sleep, so the executor that runs the node (a host
agent's, shared with its adverts, services and other components) is never blocked by the emulation."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from rclpy.node import Node

from edge_lam.link.emulation import DelayLine

__all__ = ["DelayedRelease"]

Packet = TypeVar("Packet")


class DelayedRelease(Generic[Packet]):
    """``put`` a packet; ``compute(packet)`` runs on it when the emulated host may start it and returns the seconds
    it computed; ``publish(packet)`` sends it when it has crossed the output link. ``size(packet)`` is the bytes a
    link charges for, read on arrival and again after the compute."""

    def __init__(self, node: Node, line: DelayLine, compute: Callable[[Packet], float],
                 publish: Callable[[Packet], None], size: Callable[[Packet], int]) -> None:
        self._line, self._compute, self._publish, self._size = line, compute, publish, size
        self._arriving: collections.deque[tuple[float, Packet]] = collections.deque()  # (delivered at, packet)
        self._leaving: collections.deque[tuple[float, Packet]] = collections.deque()  # (publish at, packet)
        self._timer = node.create_timer(1.0, self._release, autostart=False)

    def put(self, packet: Packet) -> None:
        self._arriving.append((self._line.arrive(time.monotonic(), self._size(packet)), packet))
        self._release()

    def _release(self) -> None:
        """Compute and publish, in order, whatever is due; then wait for the next packet that will be."""
        self._timer.cancel()
        while self._arriving and (start := self._line.start(self._arriving[0][0])) <= time.monotonic():
            packet = self._arriving.popleft()[1]
            computed_s = self._compute(packet)
            self._leaving.append((self._line.finish(start, computed_s, self._size(packet)), packet))
        while self._leaving and self._leaving[0][0] <= time.monotonic():
            self._publish(self._leaving.popleft()[1])
        due = [self._line.start(self._arriving[0][0])] if self._arriving else []
        due += [self._leaving[0][0]] if self._leaving else []
        if due:
            self._timer.timer_period_ns = max(int((min(due) - time.monotonic()) * 1e9), 1)
            self._timer.reset()
