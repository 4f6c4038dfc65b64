"""Declaring a node parameter with its description, the same way in every node.

A parameter is read-only unless the node says how to apply a change (``on_change``): then `ros2 param set` takes
effect at once, and a value outside ``low``..``high`` (or one ``check`` refuses) is refused with the reason. So
every "Set parameter successful" a user sees changed what the node does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

__all__ = ["declare"]

_LIVE = "_edge_lam_live_parameters"


def declare(node: Node, name: str, default: Any, description: str, *,
            on_change: Callable[[Any], None] | None = None,
            low: float | None = None, high: float | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare ``name`` (shown by `ros2 param describe`) and return its value at start.

    Without ``on_change`` the parameter is read-only: the node reads it once, so a set is refused rather than shown
    and ignored. Values given at start (params file, -p, launch) still apply. With ``on_change``, an accepted set
    calls ``on_change(value)`` once the parameter holds it. ``low``/``high`` bound numbers (inclusive; the start
    value too); ``check(value)`` returns why a value is refused, or None.
    """
    descriptor = ParameterDescriptor(description=description, read_only=on_change is None)
    if low is not None or high is not None:
        _set_range(descriptor, default, low, high)
        descriptor.description += f" Range {_shown(low)}..{_shown(high)}."
    value = node.declare_parameter(name, default, descriptor).value
    refusal = _refusal(value, low, high, check)
    if refusal is not None:
        raise ValueError(f"parameter '{name}': {refusal}")
    if on_change is not None:
        _live(node)[name] = (on_change, low, high, check)
    return value


def _live(node: Node) -> dict[str, tuple]:
    """This node's live parameters, with the two rclpy callbacks installed the first time."""
    live = getattr(node, _LIVE, None)
    if live is None:
        live = {}
        setattr(node, _LIVE, live)
        node.add_on_set_parameters_callback(lambda params: _validate(live, params))
        node.add_post_set_parameters_callback(lambda params: _apply(node, live, params))
    return live


def _validate(live: dict[str, tuple], params: list[Parameter]) -> SetParametersResult:
    for param in params:
        if param.name in live:
            _, low, high, check = live[param.name]
            refusal = _refusal(param.value, low, high, check)
            if refusal is not None:
                return SetParametersResult(successful=False, reason=f"{param.name}: {refusal}")
    return SetParametersResult(successful=True)


def _apply(node: Node, live: dict[str, tuple], params: list[Parameter]) -> None:
    for param in params:
        if param.name in live:
            live[param.name][0](param.value)
            node.get_logger().info(f"parameter {param.name} set to {param.value!r}: in effect now")


def _refusal(value: Any, low: float | None, high: float | None, check: Callable[[Any], str | None] | None
             ) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value and (low is not None or high is not None):  # NaN passes every comparison
            return "NaN is not a value"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{value} is outside {_shown(low)}..{_shown(high)}"
    return None if check is None else check(value)


def _set_range(descriptor: ParameterDescriptor, default: Any, low: float | None, high: float | None) -> None:
    """rclpy's own range, so `ros2 param describe` shows it (rclpy needs both ends)."""
    if isinstance(default, bool):
        return
    if isinstance(default, int):
        descriptor.integer_range = [IntegerRange(from_value=int(low if low is not None else -2**63),
                                                 to_value=int(high if high is not None else 2**63 - 1))]
    elif isinstance(default, float):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(low if low is not None else -1.7976931348623157e308),
            to_value=float(high if high is not None else 1.7976931348623157e308))]


def _shown(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"
