"""The host agent: one per machine, the component container of edge_lam (rclpy has none of its own).

It measures its host at start (reference GFLOP/s on one torch thread x ``compute_scale``, memory), keeps measuring
the load others put on the CPU and its links to the agents it hears, and publishes a ComputeAdvert with a liveliness
QoS every ``advert_period_s``. It runs the shards the placement plan gives its host, and loads or unloads
components on request (``~/load_module``, ``~/unload_module``), all in its own process and executor. /diagnostics
carries its state and one status per component.

Threads: everything runs in the executor's thread except building a component, which takes seconds (a shard loads
the model) and happens in one loader thread; the built node comes back to the executor's thread as a task, which
adds it to the executor (``Executor.add_node`` is thread-safe, but this way only one thread touches the agent's
state). Unloading (``remove_node``, then ``destroy_node``) runs in the executor's thread, so that none of the
component's callbacks can be running: spin the agent with a SingleThreadedExecutor, as ``main`` does. Components
are built in ``components_namespace`` (the agent's own by default: the chain's topics must meet there, so every
agent of a fleet names the same one) and, like rclcpp's container, ignore the process's command-line arguments, so
``-r __node:=`` and ``-p`` given to the agent stay the agent's.

Where composition_interfaces is installed, it also answers the standard container services
(``~/_container/load_node``, ``unload_node``, ``list_nodes``; see ``container_services``), so ``ros2 component``
and launch_ros's ComposableNodeContainer can drive it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import posixpath
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from edge_lam_msgs.msg import ComputeAdvert, ModuleAssignment, PlacementPlan, Tensor, TensorList
from edge_lam_msgs.srv import LoadModule, UnloadModule
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future

from edge_lam.chain.shard_node import ShardNode
from edge_lam.container.registry import COMPONENTS, component_class
from edge_lam.container.services import add_container_services
from edge_lam.descriptors import ROLES, Advert
from edge_lam.fleet.host_measurement import (
    load_between,
    read_cpu_sample,
    read_mem_available_bytes,
    reference_gflops,
    scaled,
)
from edge_lam.fleet.plan_following import PlanOrder, ShardLoad, plan_changes
from edge_lam.link.probing import BULK_PROBE_BYTES, SMALL_PROBE_BYTES, LinkProber, parse_emulated_links
from edge_lam.placement.assignments import ShardGroup, shard_groups
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import ADVERT_LEASE_S, ADVERTS, ADVERTS_READER, CONTROL, LATCHED
from edge_lam.wire.fleet import module_of, plan_assignments, to_advert_msg
from edge_lam.wire.stamps import to_ns

PEER_TIMEOUT_S = 5 * ADVERT_LEASE_S  # a peer silent this long is forgotten, with its link estimate
DIAGNOSTICS_DEPTH = 10  # the usual depth of /diagnostics publishers


@dataclasses.dataclass(eq=False)
class Hosted:
    """A component the agent runs, is loading, or failed to load (plan shards only keep their failure)."""

    name: str
    module_ids: tuple[str, ...]
    memory_bytes: int
    from_plan: bool
    shard: ShardLoad | None = None  # what it was built from, for shards: a plan compares it with what it wants
    node: Node | None = None
    error: str = ""
    waiter: Future | None = None  # a load_module call waiting for the outcome


def yaml_parameters(text: str) -> list[Parameter]:
    """A YAML mapping as parameter overrides; nested mappings become dotted names, as in a parameters file."""
    try:
        values = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ValueError(f"parameters_yaml is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"parameters_yaml must be a mapping of parameter names to values, not {type(values).__name__}")
    parameters = []
    pending = [("", values)]
    while pending:
        prefix, mapping = pending.pop()
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                pending.append((f"{name}.", value))
                continue
            try:
                if value is None:
                    raise TypeError("no value")
                parameters.append(Parameter(name, value=value))
            except TypeError as err:
                raise ValueError(f"parameters_yaml: parameter '{name}': {err}") from None
    return parameters


class HostAgentNode(Node):
    """Advertises this host, probes links to its peers, and hosts the components a plan or a caller asks for."""

    def __init__(self, node_name: str = "host_agent", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._host_id = declare(self, "host_id", socket.gethostname(), "Name of this host in adverts and plans.")
        role = declare(self, "role", "edge", "What this host is: robot, edge or cloud.")
        compute_scale = declare(self, "compute_scale", 1.0,
                                "Factor on the measured GFLOP/s; below 1 emulates a slower host (0.25: a robot).")
        memory_limit = declare(self, "memory_limit_bytes", 0,
                               "Memory offered to modules; 0 for the machine's MemAvailable at start.")
        self._model = declare(self, "model", "smollm2-135m-instruct",
                              "Model of shards whose plan or request names none: a cache model id or a folder.")
        adverts_topic = declare(self, "adverts_topic", "/edge_lam/adverts",
                                "ComputeAdverts of every agent; link probes go on link_probe(_reply) beside it.")
        plan_topic = declare(self, "plan_topic", "/edge_lam/plan", "The coordinator's PlacementPlan (latched).")
        namespace = declare(self, "components_namespace", "",
                            "Namespace of the shards and components it runs, where the chain's topics meet (the "
                            "same for every agent of a fleet, e.g. /edge_lam); empty for the agent's own.")
        self._components_namespace = namespace or self.get_namespace()
        advert_period_s = declare(self, "advert_period_s", 0.5,
                                  "Period of adverts and /diagnostics; load is measured over it.")
        probe_period_s = declare(self, "link_probe_period_s", 5.0,
                                 "Period of link probes to every peer heard in adverts; also a probe's time-out.")
        emulated = declare(self, "emulated_links", Parameter.Type.STRING_ARRAY,
                           "PEER:LATENCY_S:BANDWIDTH_BPS links advertised instead of measured ones (tests, "
                           "benchmarks), e.g. ['edge_0:0.02:100e6']; those peers are not probed.")
        self._battery = declare(self, "battery_fraction", math.nan,
                                "Battery charge 0..1 to advertise; NaN for a host without a battery.")
        if role not in ROLES:
            raise ValueError(f"role '{role}' must be one of {ROLES}")
        if not (compute_scale > 0 and advert_period_s > 0 and probe_period_s > 0 and memory_limit >= 0):
            raise ValueError("compute_scale, advert_period_s and link_probe_period_s must be > 0, "
                             "memory_limit_bytes >= 0")
        if not (math.isnan(self._battery) or 0.0 <= self._battery <= 1.0):
            raise ValueError(f"battery_fraction {self._battery} must be NaN or within [0, 1]")
        self._role = role
        self._emulated = parse_emulated_links(emulated or [], self._host_id)
        # One thread, as a shard decodes: the figure ranks hosts the way their modules will run.
        self._gflops = scaled(reference_gflops(repeats=9, threads=1), compute_scale)
        self._memory_total = memory_limit or read_mem_available_bytes()
        self._cpu = read_cpu_sample()
        self._load = 0.0
        self._hosted: dict[str, Hosted] = {}
        self._plan_order = PlanOrder()
        self._plan_level, self._plan_note = DiagnosticStatus.OK, "no plan yet"
        self._peers: dict[str, float] = {}  # host id -> time.monotonic() of its last advert
        self._prober = LinkProber(timeout_s=probe_period_s, host_id=self._host_id)
        self._payloads = {False: bytes(SMALL_PROBE_BYTES), True: bytes(BULK_PROBE_BYTES)}
        self._loads: queue.SimpleQueue[tuple[Hosted, Callable[[], Node]]] = queue.SimpleQueue()
        threading.Thread(target=self._load_components, name="component_loader", daemon=True).start()

        probe_topic = posixpath.join(posixpath.dirname(adverts_topic), "link_probe")
        self._adverts = self.create_publisher(ComputeAdvert, adverts_topic, ADVERTS)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
        self._probes = self.create_publisher(TensorList, probe_topic, CONTROL)
        self._replies = self.create_publisher(TensorList, f"{probe_topic}_reply", CONTROL)
        self.create_subscription(ComputeAdvert, adverts_topic, self.on_advert, ADVERTS_READER)
        self.create_subscription(PlacementPlan, plan_topic, self.on_plan, LATCHED)
        self.create_subscription(TensorList, probe_topic, self.on_probe, CONTROL)
        self.create_subscription(TensorList, f"{probe_topic}_reply", self.on_probe_reply, CONTROL)
        services = ReentrantCallbackGroup()  # a load call awaits its component without holding up adverts
        self.create_service(LoadModule, "~/load_module", self.on_load_module, callback_group=services)
        self.create_service(UnloadModule, "~/unload_module", self.on_unload_module, callback_group=services)
        standard = add_container_services(self, self._container_load, self._container_unload, self._full_names,
                                          callback_group=services)
        self.create_timer(advert_period_s, self.advertise)
        self.create_timer(probe_period_s, self.probe_peers)
        container = f"on {self.get_fully_qualified_name()}/_container" if standard else "off (not installed)"
        self.get_logger().info(
            f"host '{self._host_id}' ({role}): {self._gflops:.1f} GFLOP/s (x{compute_scale}), "
            f"{self._memory_total / 2**30:.2f} GiB for modules; adverts on {self._adverts.topic_name}, "
            f"plans from {plan_topic}, emulated links {sorted(self._emulated) or 'none'}; standard container "
            f"services {container}"
        )

    # -- adverts and diagnostics ---------------------------------------------------------------------------------

    def advertise(self) -> None:
        """Publish the advert and /diagnostics; the load is that of the period since the last advert."""
        sample = read_cpu_sample()
        self._load, self._cpu = load_between(self._cpu, sample), sample
        battery = None if math.isnan(self._battery) else self._battery
        advert = to_advert_msg(
            Advert(self._host_id, self._role, self._gflops, self._load, self._memory_free(), self._memory_total,
                   (*self._emulated.values(), *self._prober.measures.values()), battery,
                   tuple(self._modules_hosted())),
            self.get_clock().now().nanoseconds, self._prober.measured_at_ns)
        self._adverts.publish(advert)
        self._diagnostics.publish(self._diagnostic_array(advert))

    def _memory_free(self) -> int:
        held = sum(h.memory_bytes for h in self._hosted.values() if not h.error)
        return max(0, self._memory_total - held)

    def _modules_hosted(self) -> list[str]:
        return [m for h in self._hosted.values() if h.node is not None for m in h.module_ids]

    def _diagnostic_array(self, advert: ComputeAdvert) -> DiagnosticArray:
        agent = DiagnosticStatus(
            level=self._plan_level, name=self.get_fully_qualified_name(), hardware_id=self._host_id,
            message=f"{len(advert.modules_hosted)} modules running; {self._plan_note}",
            values=[KeyValue(key=k, value=v) for k, v in (
                ("compute_gflops", f"{advert.compute_gflops:.3f}"), ("load", f"{advert.load:.3f}"),
                ("memory_total_bytes", str(advert.memory_total_bytes)),
                ("memory_free_bytes", str(advert.memory_free_bytes)),
                ("modules_hosted", " ".join(advert.modules_hosted)),
                ("peers", " ".join(sorted(self._peers))),
            )],
        )
        array = DiagnosticArray(status=[agent])
        for entry in self._hosted.values():
            if entry.node is not None:
                level, message = DiagnosticStatus.OK, "running"
            elif entry.error:
                level, message = DiagnosticStatus.ERROR, f"load failed: {entry.error}"
            else:
                level, message = DiagnosticStatus.WARN, "loading"
            array.status.append(DiagnosticStatus(
                level=level, name=posixpath.join(self._components_namespace, entry.name), hardware_id=self._host_id,
                message=message, values=[
                    KeyValue(key="modules", value=" ".join(entry.module_ids)),
                    KeyValue(key="memory_bytes", value=str(entry.memory_bytes)),
                    KeyValue(key="assigned_by", value="plan" if entry.from_plan else "load_module"),
                ],
            ))
        array.header.stamp = advert.header.stamp
        return array

    # -- link probes ---------------------------------------------------------------------------------------------

    def on_advert(self, advert: ComputeAdvert) -> None:
        peer = advert.host_id
        if peer == self._host_id:
            return
        heard_before = peer in self._peers
        self._peers[peer] = time.monotonic()
        if not heard_before and peer not in self._emulated:
            self._send_probe(peer, bulk=False)  # a link estimate as soon as possible, not a period later

    def probe_peers(self) -> None:
        now = time.monotonic()
        for peer, heard in list(self._peers.items()):
            if now - heard > PEER_TIMEOUT_S:
                del self._peers[peer]
                self._prober.forget(peer)
                self.get_logger().info(f"peer '{peer}' silent for {now - heard:.1f} s: forgotten")
            elif peer not in self._emulated and self._prober.due(peer, now):
                self._send_probe(peer, bulk=False)

    def _send_probe(self, peer: str, *, bulk: bool) -> None:
        stamp = self.get_clock().now()
        payload = self._payloads[bulk]
        probe = TensorList(tensors=[Tensor(name=peer, dtype="uint8", shape=[len(payload)], data=payload)])
        probe.header.stamp, probe.header.frame_id = stamp.to_msg(), self._host_id
        self._prober.sent(peer, stamp.nanoseconds, time.monotonic(), bulk=bulk)
        self._probes.publish(probe)

    def on_probe(self, probe: TensorList) -> None:
        if not probe.tensors or probe.tensors[0].name != self._host_id:
            return  # another agent's probe
        reply = TensorList(tensors=[Tensor(name=probe.header.frame_id, dtype="uint8", shape=[0])])
        reply.header.stamp, reply.header.frame_id = probe.header.stamp, self._host_id
        self._replies.publish(reply)

    def on_probe_reply(self, reply: TensorList) -> None:
        if not reply.tensors or reply.tensors[0].name != self._host_id:
            return  # a reply to another agent
        seq = to_ns(reply.header.stamp)
        peer = reply.header.frame_id
        if self._prober.answered(peer, seq, time.monotonic(), self.get_clock().now().nanoseconds):
            self._send_probe(peer, bulk=True)

    # -- the plan ------------------------------------------------------------------------------------------------

    def on_plan(self, plan: PlacementPlan) -> None:
        if not self._plan_order.accept(plan.plan_id, plan.version, to_ns(plan.header.stamp)):
            self.get_logger().info(f"plan {plan.plan_id} v{plan.version} ignored: not newer than the one in force")
            return
        try:
            groups = shard_groups(plan_assignments(plan), self._host_id)
        except ValueError as err:
            self._plan_level, self._plan_note = DiagnosticStatus.WARN, f"plan v{plan.version} unusable: {err}"
            self.get_logger().error(f"plan {plan.plan_id} v{plan.version} unusable: {err}")
            return
        for name in [n for n, h in self._hosted.items() if h.from_plan and h.error]:
            del self._hosted[name]  # a failed load of the last plan: retried below if this plan still wants it
        wanted = [ShardLoad(g, plan.model_id or self._model, plan.wire_dtype or "float16") for g in groups]
        names, modules = {w.name for w in wanted}, {m for w in wanted for m in w.module_ids}
        # The plan's shards, and any loaded by load_module that clash with them (a name or a module in common):
        # two shards of one module would both answer every packet.
        running = {n: h.shard for n, h in self._hosted.items() if h.shard is not None and not h.error
                   and (h.from_plan or n in names or modules.intersection(h.module_ids))}
        changes = plan_changes(running, wanted)
        for name in changes.unload:
            self._unload(name)
        for shard in changes.keep:
            entry = self._hosted[shard.name]
            entry.from_plan, entry.shard, entry.memory_bytes = True, shard, shard.group.memory_bytes
        for shard in changes.load:
            self._start_load(Hosted(shard.name, shard.module_ids, shard.group.memory_bytes, True, shard),
                             functools.partial(self._build_shard, shard, []))
        self._plan_level = DiagnosticStatus.OK
        self._plan_note = f"plan {plan.plan_id} v{plan.version}: {len(wanted)} shards here"
        self.get_logger().info(
            f"{self._plan_note}; loading {[s.name for s in changes.load]}, unloading {list(changes.unload)}, "
            f"keeping {[s.name for s in changes.keep]}"
        )

    # -- loading and unloading -----------------------------------------------------------------------------------

    def _start_load(self, entry: Hosted, build: Callable[[], Node]) -> None:
        self._hosted[entry.name] = entry
        self._loads.put((entry, build))

    def _load_components(self) -> None:
        """The loader thread: builds one component at a time (each may load a model), hands it to the executor."""
        while True:
            entry, build = self._loads.get()
            if self._hosted.get(entry.name) is not entry:
                node, error = None, ""  # unloaded while queued: nothing to build
            else:
                try:
                    node, error = build(), ""
                except Exception as err:  # a component that fails to start is reported, never fatal to the agent
                    node, error = None, f"{type(err).__name__}: {err}"
            executor = self.executor
            if executor is None:
                if node is not None:
                    node.destroy_node()
                continue
            executor.create_task(self._attach, entry, node, error)

    def _attach(self, entry: Hosted, node: Node | None, error: str) -> None:
        """In the executor's thread: start a built component, or record why it could not be built."""
        if self._hosted.get(entry.name) is not entry:
            if node is not None:
                node.destroy_node()
            self._answer(entry, False, f"{entry.name} was unloaded before it finished loading")
        elif node is None:
            self.get_logger().error(f"loading {entry.name} ({', '.join(entry.module_ids)}) failed: {error}")
            entry.error = error
            if not entry.from_plan:
                del self._hosted[entry.name]  # the caller gets the error in its answer
            self._answer(entry, False, f"loading {entry.name} failed: {error}")
        else:
            if isinstance(node, ShardNode):
                # ShardNode set torch's threads in the loader thread, but the count belongs to the calling thread:
                # set it in the one that runs the shard's callbacks (shared by every shard of this agent)
                torch.set_num_threads(node.get_parameter("num_threads").value)
            self.executor.add_node(node)
            entry.node = node
            self.get_logger().info(f"{node.get_fully_qualified_name()} running ({', '.join(entry.module_ids)})")
            self._answer(entry, True, f"loaded {node.get_fully_qualified_name()} ({', '.join(entry.module_ids)})")

    def _answer(self, entry: Hosted, success: bool, message: str) -> None:
        if entry.waiter is not None:
            entry.waiter.set_result((success, message))
            entry.waiter = None
            self.executor.wake()  # the waiting service call resumes at the executor's next turn: make it now

    def _unload(self, name: str) -> None:
        entry = self._hosted.pop(name)
        if entry.node is not None:
            self.executor.remove_node(entry.node)
            entry.node.destroy_node()
            self.get_logger().info(f"{name} unloaded ({', '.join(entry.module_ids)})")

    def _build_component(self, kind: str, name: str, extra: list[Parameter], namespace: str = "",
                         remap_rules: tuple[str, ...] = ()) -> Node:
        cli_args = ["--ros-args", *(arg for rule in remap_rules for arg in ("-r", rule))] if remap_rules else None
        return component_class(kind)(name, namespace=namespace or self._components_namespace,
                                     use_global_arguments=False, parameter_overrides=extra, cli_args=cli_args)

    def _build_shard(self, shard: ShardLoad, extra: list[Parameter]) -> Node:
        group = shard.group
        overrides = [
            Parameter("model", value=shard.model), Parameter("wire_dtype", value=shard.wire_dtype),
            Parameter("host_id", value=self._host_id), *extra,
            Parameter("modules", value=[str(m) for m in group.modules]),
            Parameter("input_topic", value=group.input_topic),
            Parameter("output_topic", value=group.output_topic),
        ]
        return ShardNode(group.name, namespace=self._components_namespace, use_global_arguments=False,
                         parameter_overrides=overrides)

    # -- services ------------------------------------------------------------------------------------------------

    async def on_load_module(self, request: LoadModule.Request,
                             response: LoadModule.Response) -> LoadModule.Response:
        try:
            entry, build = self._requested(request)
        except ValueError as err:
            self.get_logger().warning(f"load_module refused: {err}")
            response.success, response.message = False, str(err)
            return response
        entry.waiter = Future()
        self._start_load(entry, build)
        response.success, response.message = await entry.waiter
        return response

    def _requested(self, request: LoadModule.Request) -> tuple[Hosted, Callable[[], Node]]:
        """What a load_module request asks for, or ValueError saying why it cannot be loaded."""
        module = request.module
        extra = yaml_parameters(request.parameters_yaml)
        if module.kind == ModuleAssignment.KIND_ENCODER:
            # module_id names a component as compose does: KIND or KIND:NODE_NAME
            kind, _, node_name = module.module_id.partition(":")
            if kind not in COMPONENTS:
                raise ValueError(f"module_id '{module.module_id}' names no component kind "
                                 f"(KIND or KIND:NODE_NAME, KIND one of {', '.join(sorted(COMPONENTS))})")
            entry = Hosted(node_name or kind, (module.module_id,), module.memory_bytes, False)
            build = functools.partial(self._build_component, kind, entry.name, extra)
        else:
            spec = module_of(module)  # ValueError for a kind that is not a model module, or a bad layer range
            module_id = spec.module_id
            if module.module_id and module.module_id != module_id:
                raise ValueError(f"module_id '{module.module_id}' does not match the module's kind and layers "
                                 f"('{module_id}')")
            if not (module.input_topic and module.output_topic):
                raise ValueError(f"module '{module_id}' needs an input_topic and an output_topic")
            group = ShardGroup((spec,), module.input_topic, module.output_topic, module.memory_bytes)
            shard = ShardLoad(group, request.model_id or self._model)
            entry = Hosted(group.name, shard.module_ids, module.memory_bytes, False, shard)
            build = functools.partial(self._build_shard, shard, extra)
        held = {m: h.name for h in self._hosted.values() if not h.error for m in h.module_ids}
        for module_id in entry.module_ids:
            if module_id in held:
                raise ValueError(f"module '{module_id}' is already hosted here, in {held[module_id]}")
        if entry.name in self._hosted and not self._hosted[entry.name].error:
            raise ValueError(f"a component named '{entry.name}' is already hosted here")
        return entry, build

    async def _container_load(self, kind: str, name: str, namespace: str, parameters: list[Parameter],
                              remap_rules: list[str]) -> tuple[bool, str, str]:
        """A component asked for through the standard container service (composition_interfaces)."""
        if name in self._hosted and not self._hosted[name].error:
            return False, f"a component named '{name}' is already hosted here", ""
        entry = Hosted(name, (f"{kind}:{name}",), 0, False)
        entry.waiter = Future()
        self._start_load(entry, functools.partial(self._build_component, kind, name, parameters, namespace,
                                                  tuple(remap_rules)))
        success, message = await entry.waiter
        return success, message, entry.node.get_fully_qualified_name() if success else ""

    def _container_unload(self, name: str) -> bool:
        if name not in self._hosted:
            return False
        self._unload(name)
        return True

    def _full_names(self) -> dict[str, str]:
        return {h.node.get_fully_qualified_name(): name for name, h in self._hosted.items() if h.node is not None}

    def on_unload_module(self, request: UnloadModule.Request,
                         response: UnloadModule.Response) -> UnloadModule.Response:
        entry = next((h for h in self._hosted.values() if request.module_id in h.module_ids and not h.error), None)
        if entry is None:
            response.success = False
            response.message = (f"module '{request.module_id}' is not hosted here "
                                f"(hosted: {', '.join(self._modules_hosted()) or 'none'})")
        else:
            self._unload(entry.name)
            response.success = True
            response.message = f"unloaded {entry.name} ({', '.join(entry.module_ids)})"
        return response


def main(args: list[str] | None = None) -> None:
    try:
        with rclpy.init(args=args), SingleThreadedExecutor() as executor:
            executor.add_node(HostAgentNode())
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
