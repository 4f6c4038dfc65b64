"""What every executable's ``main`` does, as ros2/demos' talker does it: init, spin one node, and take Ctrl-C or an
external shutdown as the normal end."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

__all__ = ["spin_node"]


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    try:
        with rclpy.init(args=args):
            rclpy.spin(make_node())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
