"""Bags as the test bench: replaying rosbag2 bags into the graph and recording topics back to bags.

``schedule`` is the pure core (which message goes out on which topic, and when); ``replay`` and ``record`` are the
rclpy sides behind ``edge-lam replay`` and ``edge-lam record``. The helpers here are shared by both commands.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import time
from collections.abc import Iterator

__all__ = ["StopFlag", "bound_teardown", "stop_requested"]

# Fast DDS can hang while a participant is deleted (eProsima/Fast-DDS#6502, open); once a command's work is done
# and reported, its teardown gets this long before the process is ended.
TEARDOWN_S = 10.0


class StopFlag:
    """Asks a command to stop at its next clean point; SIGINT and SIGTERM set it (see ``stop_requested``).

    Not a threading.Event: setting one from a signal handler deadlocks if the signal lands while the main thread
    holds the event's lock. ``wait`` sleeps in short slices instead, so a signal is seen within 50 ms.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` or until set; return whether it is set."""
        deadline = time.monotonic() + timeout_s
        while not self._set and (left_s := deadline - time.monotonic()) > 0:
            time.sleep(min(left_s, 0.05))
        return self._set


@contextlib.contextmanager
def stop_requested() -> Iterator[StopFlag]:
    """A StopFlag that SIGINT and SIGTERM set instead of raising, so a command stops at a clean point.

    A KeyboardInterrupt unwinding through a rosbags Writer aborts the bag (no metadata.yaml), and rclpy's own handler
    shuts the context down before messages already received can be written; so the commands install this instead
    (with rclpy's handlers off) and check the flag between messages.
    """
    stop = StopFlag()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bound_teardown() -> None:
    """End the process (status 1, with a traceback on stderr) if the rest of its teardown takes over TEARDOWN_S."""
    faulthandler.dump_traceback_later(TEARDOWN_S, exit=True)
