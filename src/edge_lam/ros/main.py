"""What every executable's ``main`` does, as ros2/demos' talker does it: init, spin, and take Ctrl-C or an external
shutdown as the normal end; ``compose`` does the same for several components in one process."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node
from rclpy.task import Future

__all__ = ["spin_logging_failures", "spin_node", "spin_nodes"]


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
                spin_logging_failures(executor, nodes[0].get_logger())
            finally:
                for node in nodes:
                    node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def spin_logging_failures(executor: Executor, logger: RcutilsLogger, until: Future | None = None) -> None:
    """Spin until shutdown (or until ``until`` is done). A callback that raises is logged with its traceback and
    skipped, so one bad message cannot end every node of the process (rclpy's own parameter services raise on a
    parameter of an unknown type). An error once the context is shut down (a publish that a signal's shutdown
    overtook) is the normal end."""
    while executor.context.ok() and (until is None or not until.done()):
        try:
            executor.spin_once()
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception:
            if not executor.context.ok():
                return
            logger.error(f"a callback failed and was skipped:\n{traceback.format_exc()}")
