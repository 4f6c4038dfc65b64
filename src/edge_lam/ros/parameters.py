"""Declaring a node parameter with its description and reading it once, the same way in every node."""

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare(node: Node, name: str, default: Any, description: str) -> Any:
    """Declare ``name`` (shown by `ros2 param describe`) and return its value at start. Read only: nodes read their
    parameters once, so an accepted `ros2 param set` would change what `ros2 param get` shows (a trust store, say),
    not what the node does; it is refused instead. Values given at start (params file, -p, launch) still apply."""
    return node.declare_parameter(
        name, default, ParameterDescriptor(description=description, read_only=True)).value
