"""Stopping the processes a command started, as a user at a terminal would: SIGINT (a node's clean shutdown), then
SIGTERM, then SIGKILL, each after a grace period, so that a node hung in teardown can't outlive its caller."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterable

__all__ = ["stop_processes"]


def stop_processes(processes: Iterable[subprocess.Popen], grace_s: float = 10.0,
                   signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)) -> None:
    """Signal every live process, wait up to ``grace_s`` for all of them, escalate for those still alive."""
    chosen = list(processes)
    for signum in signals:
        alive = [p for p in chosen if p.poll() is None]
        if not alive:
            return
        for process in alive:
            process.send_signal(signum)
        deadline = time.monotonic() + grace_s
        for process in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
