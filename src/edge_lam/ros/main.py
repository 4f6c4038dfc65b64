"""What every executable's ``main`` does, as ros2/demos' talker does it: init, spin, and take Ctrl-C or an external
shutdown as the normal end; ``compose`` does the same for several components in one process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

__all__ = ["spin_node", "spin_nodes"]


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    spin_nodes([make_node], args)


def spin_nodes(makers: Sequence[Callable[[], Node]], args: list[str] | None = None) -> None:
    """Build the nodes in order and spin them on one single-threaded executor until shutdown, then destroy every
    node built (so a node that owns threads, such as a host agent's loader, stops them)."""
    try:
        with rclpy.init(args=args), SingleThreadedExecutor() as executor:
            nodes: list[Node] = []
            try:
                for make in makers:
                    nodes.append(make())
                    executor.add_node(nodes[-1])
                executor.spin()
            except RuntimeError:  # rclpy's RCLError from a call that a signal's shutdown overtook is a normal end too
                if executor.context.ok():
                    raise
            finally:
                for node in nodes:
                    node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
