"""Loading and unloading the components a container hosts, and the account of what it hosts.

Building a component takes seconds (a shard loads the model), so one loader thread builds them, one at a time in
the order asked, and hands each built node back to the executor's thread as a task, which adds it to the executor:
only that thread touches the account and the executor's nodes. Unloading (``remove_node``, then ``destroy_node``)
runs in the executor's thread too, so none of the component's callbacks can be running: spin the container with a
SingleThreadedExecutor. A component unloaded while its build waits in the queue is not built.

Every component is built through the registry (``container.registry``) from a ``ComponentRequest`` (kind, node
name, namespace, parameters, remap rules) and, like rclcpp's container, ignores the process's command-line
arguments, so ``-r __node:=`` and ``-p`` given to the container stay the container's.

``close()`` stops the loader before the process ends: a build in progress is waited for (CLOSE_TIMEOUT_S at most)
and thrown away, queued ones are dropped, and every component is destroyed. A build still running then is abandoned:
the executables end with ``os._exit`` (``ros.main``), so a thread left inside torch or rcl cannot abort the process
at interpreter exit, and Ctrl-C stays within the 2 s a launch file may expect.
"""

from __future__ import annotations

import dataclasses
import posixpath
import queue
import threading
import types
from collections.abc import Mapping

import rclpy.logging
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future

from edge_lam.container.registry import component_class
from edge_lam.wire.diagnostics import Status

__all__ = ["ComponentLoader", "ComponentRequest", "Hosted"]

CLOSE_TIMEOUT_S = 1.0  # a build still running after this long at close is abandoned, not waited for


@dataclasses.dataclass(frozen=True)
class ComponentRequest:
    """What to build: a component kind of the registry, its node name and namespace (empty: the container's),
    parameter overrides and remap rules."""

    kind: str
    name: str
    namespace: str = ""
    parameters: tuple[Parameter, ...] = ()
    remap_rules: tuple[str, ...] = ()


@dataclasses.dataclass(eq=False)
class Hosted:
    """A component the container runs or is loading, or that failed to load (kept for /diagnostics when nobody
    waited for the answer; a caller who waited gets the error instead)."""

    request: ComponentRequest
    module_ids: tuple[str, ...]
    memory_bytes: int
    asked_by: str  # who asked for it: the placement plan, load_module or load_node
    source: object = None  # what the asker built the request from (a plan's shard), to compare when it asks again
    node: Node | None = None
    error: str = ""
    waiter: Future | None = None  # resolves to (success, message) for a caller waiting for the outcome

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def state(self) -> str:
        """running, failed or loading."""
        return "running" if self.node is not None else "failed" if self.error else "loading"


class ComponentLoader:
    """The components hosted in ``owner``'s process and executor (``components_namespace`` by default)."""

    def __init__(self, owner: Node, namespace: str) -> None:
        self._owner, self._namespace = owner, namespace
        self._hosted: dict[str, Hosted] = {}
        self._builds: queue.SimpleQueue[Hosted | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        # Not the node's logger: after Ctrl-C its /rosout publisher has no context left to publish in.
        self._stop_logger = rclpy.logging.get_logger(f"{owner.get_logger().name}.loader")
        # A daemon, so that a build that never ends cannot keep the process alive after close() gave up on it.
        self._thread = threading.Thread(target=self._build_queued, name="component_loader", daemon=True)
        self._thread.start()

    @property
    def hosted(self) -> Mapping[str, Hosted]:
        return types.MappingProxyType(self._hosted)

    def running_modules(self) -> list[str]:
        return [m for h in self._hosted.values() if h.node is not None for m in h.module_ids]

    def full_names(self) -> dict[str, str]:
        """Full node name -> component name, of the components running."""
        return {h.node.get_fully_qualified_name(): h.name for h in self._hosted.values() if h.node is not None}

    def held_memory_bytes(self) -> int:
        """Memory of the components running or loading."""
        return sum(h.memory_bytes for h in self._hosted.values() if not h.error)

    def held_modules(self) -> dict[str, str]:
        """Module id -> component name, of the components running or loading (not those that failed)."""
        return {m: h.name for h in self._hosted.values() if not h.error for m in h.module_ids}

    def check_free(self, name: str, module_ids: tuple[str, ...]) -> None:
        """ValueError when a component of that name, or one holding one of those modules, runs or is loading."""
        held = self.held_modules()
        for module_id in module_ids:
            if module_id in held:
                raise ValueError(f"module '{module_id}' is already hosted here, in {held[module_id]}")
        if name in self._hosted and not self._hosted[name].error:
            raise ValueError(f"a component named '{name}' is already hosted here")

    def load(self, entry: Hosted) -> None:
        """Queue the build of a component (replacing a failed one of its name); it runs once built."""
        self._hosted[entry.name] = entry
        self._builds.put(entry)

    async def loaded(self, entry: Hosted) -> tuple[bool, str]:
        """Load a component and wait for the outcome: success and a message saying what runs or why not."""
        entry.waiter = Future()
        self.load(entry)
        return await entry.waiter

    def unload(self, name: str) -> Hosted:
        """Stop a component (or forget a failed or queued one)."""
        entry = self._hosted.pop(name)
        if entry.node is not None:
            self._owner.executor.remove_node(entry.node)
            entry.node.destroy_node()
            self._owner.get_logger().info(f"{name} unloaded ({', '.join(entry.module_ids)})")
        return entry

    def statuses(self, hardware_id: str) -> list[Status]:
        """A /diagnostics status per component: running (ok), loading (warn), or why its load failed (error)."""
        shown = {"running": ("ok", "running"), "loading": ("warn", "loading")}
        return [Status(posixpath.join(h.request.namespace or self._namespace, h.name),
                       *shown.get(h.state, ("error", f"load failed: {h.error}")), hardware_id,
                       {"modules": " ".join(h.module_ids), "memory_bytes": str(h.memory_bytes),
                        "assigned_by": h.asked_by})
                for h in self._hosted.values()]

    def close(self) -> None:
        """Stop the loader thread (waiting for a build in progress, which is discarded) and every component."""
        self._closing.set()
        self._builds.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            self._stop_logger.warning(f"a component still building after {CLOSE_TIMEOUT_S:g} s is abandoned")
        for entry in self._hosted.values():
            if entry.node is not None:
                self._owner.executor.remove_node(entry.node)
                entry.node.destroy_node()
        self._hosted.clear()

    def _build_queued(self) -> None:
        """The loader thread: builds one component at a time and hands it to the executor's thread."""
        while (entry := self._builds.get()) is not None and not self._closing.is_set():
            node, error = None, ""
            if self._hosted.get(entry.name) is entry:  # not unloaded while it waited
                try:
                    node = self._build(entry.request)
                except Exception as err:  # a component that fails to start is reported, never fatal to the host
                    error = f"{type(err).__name__}: {err}"
            if self._closing.is_set():
                if node is not None:
                    node.destroy_node()
                self._stop_logger.info(f"{entry.name} was still loading when the container stopped: discarded")
                return
            self._owner.executor.create_task(self._attach, entry, node, error)

    def _build(self, request: ComponentRequest) -> Node:
        remaps = ["--ros-args", *(arg for rule in request.remap_rules for arg in ("-r", rule))]
        return component_class(request.kind)(
            request.name, namespace=request.namespace or self._namespace, use_global_arguments=False,
            parameter_overrides=list(request.parameters), cli_args=remaps if request.remap_rules else None)

    def _attach(self, entry: Hosted, node: Node | None, error: str) -> None:
        """In the executor's thread: start a built component, or record why it could not be built."""
        logger = self._owner.get_logger()
        if self._hosted.get(entry.name) is not entry:
            if node is not None:
                node.destroy_node()
            self._answer(entry, False, f"{entry.name} was unloaded before it finished loading")
        elif node is None:
            logger.error(f"loading {entry.name} ({', '.join(entry.module_ids)}) failed: {error}")
            entry.error = error
            if entry.waiter is not None:
                del self._hosted[entry.name]  # the caller gets the error in its answer
            self._answer(entry, False, f"loading {entry.name} failed: {error}")
        else:
            self._owner.executor.add_node(node)
            entry.node = node
            logger.info(f"{node.get_fully_qualified_name()} running ({', '.join(entry.module_ids)})")
            self._answer(entry, True, f"loaded {node.get_fully_qualified_name()} ({', '.join(entry.module_ids)})")

    def _answer(self, entry: Hosted, success: bool, message: str) -> None:
        if entry.waiter is not None:
            entry.waiter.set_result((success, message))
            entry.waiter = None
            self._owner.executor.wake()  # the waiting service call resumes at the executor's next turn: make it now
