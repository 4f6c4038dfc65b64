"""A node's bounds on /diagnostics: how close each limit a user set (sessions, KV bytes, queued requests) is to
being reached, so `ros2 topic echo /diagnostics` or rqt_runtime_monitor shows it before requests are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from edge_lam.wire.diagnostics import Status, to_diagnostic_array

__all__ = ["Bounds", "usage_status"]

WARN_SHARE = 0.9  # a bound this full is a warning
DIAGNOSTICS_DEPTH = 10  # the usual depth of /diagnostics publishers


def usage_status(name: str, hardware_id: str, usage: dict[str, tuple[float, float]]) -> Status:
    """One status for ``usage`` (bound -> (used, limit)): warn when any is at least 90% used, error when over."""
    shares = {key: (used / limit if limit > 0 else 0.0) for key, (used, limit) in usage.items()}
    worst = max(shares, key=shares.get, default=None)
    share = shares.get(worst, 0.0)
    level = "error" if share > 1.0 else "warn" if share >= WARN_SHARE else "ok"
    message = "within bounds" if worst is None else f"{worst} at {share:.0%} of its bound"
    values = {key: f"{_number(used)} / {_number(limit)}" for key, (used, limit) in usage.items()}
    return Status(name, level, message, hardware_id, values)


class Bounds:
    """Publishes the usage of a node's bounds on /diagnostics every ``period_s``.

    ``add(name, used, limit)`` registers a bound by two callables, so a limit changed by `ros2 param set` shows at
    the next period; ``show(values)`` adds values that are not bounds (they never change the status's level).
    """

    def __init__(self, node: Node, period_s: float = 1.0) -> None:
        self._node = node
        self._bounds: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {}
        self._shown: list[Callable[[], dict[str, str]]] = []
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
        self._timer = node.create_timer(period_s, self.publish)

    def add(self, name: str, used: Callable[[], float], limit: Callable[[], float]) -> None:
        self._bounds[name] = (used, limit)

    def show(self, values: Callable[[], dict[str, str]]) -> None:
        """Show ``values()`` (key -> text), called once per period, beside the bounds."""
        self._shown.append(values)

    def usage(self) -> dict[str, tuple[float, float]]:
        return {name: (float(used()), float(limit())) for name, (used, limit) in self._bounds.items()}

    def publish(self) -> None:
        status = usage_status(f"{self._node.get_fully_qualified_name()}: bounds", self._node.get_name(),
                              self.usage())
        if self._shown:
            status = dataclasses.replace(status, values={**status.values,
                                                         **{k: v for shown in self._shown for k, v in shown().items()}})
        self._publisher.publish(to_diagnostic_array([status], self._node.get_clock().now().nanoseconds))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"
