"""Spin until something happens: the one wait that tests, benches and the demo share."""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor
from rclpy.node import Node

__all__ = ["spin_until"]


def spin_until(spinner: Executor | Node, done: Callable[[], object], timeout_s: float, *,
               period_s: float = 0.05) -> bool:
    """Spin ``spinner`` until ``done()`` is true or ``timeout_s`` passes; return whether it came true.

    A node is spun the ``rclpy.spin_once`` way (the global executor). ``done`` is checked before every spin and the
    last spin never outlasts the deadline. A callback ends a spin at once, so ``period_s`` only bounds how long a
    spin that sees no callback waits before ``done`` is checked again: conditions that change without a callback
    (the graph, a clock, another process) are seen within it.
    """
    deadline = time.monotonic() + timeout_s
    while not done():
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return False
        if isinstance(spinner, Node):
            rclpy.spin_once(spinner, timeout_sec=min(period_s, left_s))
        else:
            spinner.spin_once(timeout_sec=min(period_s, left_s))
    return True
