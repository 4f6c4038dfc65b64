"""Declaring a node parameter with its description and reading it once, the same way in every node."""

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare(node: Node, name: str, default: Any, description: str) -> Any:
    """Declare ``name`` (shown by `ros2 param describe`) and return its value at start."""
    return node.declare_parameter(name, default, ParameterDescriptor(description=description)).value
