"""What every executable's ``main`` does, as ros2/demos' talker does it: init, spin, and take Ctrl-C or an external
shutdown as the normal end; ``compose`` does the same for several components in one process.

The process then ends with ``os._exit`` once rclpy has shut down cleanly (nodes destroyed, so Fast DDS has released
its shared-memory segments) and the output is flushed. Two reasons: Python's own teardown of torch and
transformers takes 1.2-1.7 s, which made ``ros2 launch`` escalate to SIGTERM; and a thread still inside torch or
rcl when the interpreter finalises (a host agent's loader, mid-build) aborts the process ("terminate called without
an active exception"). Nothing of ours runs at interpreter exit, so skipping it loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.node import Node
from rclpy.task import Future

__all__ = ["end_process", "spin_logging_failures", "spin_node", "spin_nodes"]


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> NoReturn:
    spin_nodes([make_node], args)


def spin_nodes(makers: Sequence[Callable[[], Node]], args: list[str] | None = None) -> NoReturn:
    """Build the nodes in order and spin them on one single-threaded executor until shutdown, destroy every node
    built (so a node that owns threads, such as a host agent's loader, stops them), then end the process: status 0
    after Ctrl-C or an external shutdown, 1 (with the traceback) when building or spinning failed."""
    try:
        _spin(makers, args)
    except (KeyboardInterrupt, ExternalShutdownException):
        end_process(0)
    except SystemExit as stop:  # sys.exit's meaning: None is success, a message is told and fails
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        end_process(stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1)
    except BaseException:  # whatever it was is told before the process ends
        traceback.print_exc()
        end_process(1)
    end_process(0)


def _spin(makers: Sequence[Callable[[], Node]], args: list[str] | None) -> None:
    with rclpy.init(args=args), SingleThreadedExecutor() as executor:
        nodes: list[Node] = []
        try:
            for make in makers:
                nodes.append(make())
                executor.add_node(nodes[-1])
            spin_logging_failures(executor, nodes[0].get_logger())
        except RuntimeError:
            # rclpy's RCLError ("publisher's context is invalid") from a publish or call that a signal's shutdown
            # overtook, in any node's callback: a normal end, handled here once for every node.
            if executor.context.ok():
                raise
        except KeyboardInterrupt:
            pass  # the nodes are still destroyed below, and the context shut down on the way out
        finally:
            for node in nodes:
                node.destroy_node()


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


def end_process(code: int) -> NoReturn:
    """Flush what was written and end at once, skipping the interpreter's teardown (see the module's docstring)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone away must not change the status
            stream.flush()
    os._exit(code)
