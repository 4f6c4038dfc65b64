"""The host agent: one per machine, the component container of edge_lam (rclpy has none of its own).

It measures its
host at start (reference GFLOP/s and memory bandwidth on one torch thread, both x ``compute_scale``, memory:
``fleet.host_measurement``), keeps
measuring the load others put on the CPU and its links to the agents it hears (``link.probing``), and publishes a
ComputeAdvert with a liveliness QoS every ``advert_period_s`` (often: after a liveliness loss the coordinator takes
the host silent for three periods for the lost one), and every ``diagnostics_period_s`` /diagnostics: its state and
one status per component. It runs the shards the placement plan gives its host (``fleet.plan_following`` decides
what to load, keep and unload), and loads or unloads components on request (``~/load_module``, ``~/unload_module``),
all in its own process and executor: ``container.loader`` builds them in a thread of its own and hands them to the
executor, which must be a SingleThreadedExecutor, as in ``main``. Components are built in ``components_namespace``
(the agent's own by default: the chain's topics must meet there, so every agent of a fleet names the same one).

Where composition_interfaces is installed, it also answers the standard container services
(``~/_container/load_node``, ``unload_node``, ``list_nodes``; see ``container.services``), so ``ros2 component`` and
launch_ros's ComposableNodeContainer can drive it.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
import socket
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import ComputeAdvert, ModuleAssignment, PlacementPlan, TensorList
from edge_lam_msgs.srv import LoadModule, UnloadModule
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter

from edge_lam.container.loader import ComponentLoader, ComponentRequest, Hosted
from edge_lam.container.parameters import YamlBounds, parameter_overrides, yaml_parameters
from edge_lam.container.registry import COMPONENTS
from edge_lam.container.services import add_container_services
from edge_lam.descriptors import ROLES, Advert
from edge_lam.fleet.host_measurement import (
    load_between,
    read_cpu_sample,
    read_mem_available_bytes,
    reference_bandwidth_gbps,
    reference_gflops,
    scaled,
)
from edge_lam.fleet.plan_following import Hosting, PlanFollower, ShardLoad
from edge_lam.link.probing import SMALL_PROBE_BYTES, LinkProber, parse_emulated_links
from edge_lam.model.loading import MODELS
from edge_lam.placement.assignments import ShardGroup
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import ADVERT_LEASE_S, ADVERTS, ADVERTS_READER, CONTROL, LATCHED, with_lease
from edge_lam.ros.trust import declare_trust
from edge_lam.wire.diagnostics import Status, to_diagnostic_array
from edge_lam.wire.fleet import module_of, plan_assignments, plan_standbys, to_advert_msg
from edge_lam.wire.probes import Probe, from_probe_msg, to_probe_msg
from edge_lam.wire.stamps import to_ns

PEER_TIMEOUT_S = 10.0  # a peer silent this long is forgotten, with its link estimate
DIAGNOSTICS_DEPTH = 10  # the usual depth of /diagnostics publishers
PROBE_CHECKS = 4  # looks per probe period for peers whose next (randomly spaced) round is due
PLAN = "plan"  # who asked for the plan's shards, in the loader's account and on /diagnostics


class HostAgentNode(Node):
    """Advertises this host, probes links to its peers, and hosts the components a plan or a caller asks for."""

    def __init__(self, node_name: str = "host_agent", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._loader: ComponentLoader | None = None  # rclpy destroys the node even when a parameter is refused below
        self._host_id = declare(self, "host_id", socket.gethostname(), "Name of this host in adverts and plans.")
        role = declare(self, "role", "edge", "What this host is: robot, edge or cloud.")
        compute_scale = declare(self, "compute_scale", 1.0,
                                "Factor on the measured GFLOP/s and memory bandwidth; below 1 emulates a slower host "
                                "(0.25: a robot), whose shards then run that much slower (compute_slowdown).")
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
        advert_period_s = declare(self, "advert_period_s", 0.1,
                                  "Period of adverts: the coordinator tells a lost host from the others by three "
                                  "missed adverts, so it bounds how soon a loss is placed again.")
        diagnostics_period_s = declare(self, "diagnostics_period_s", 1.0,
                                       "Period of /diagnostics; the load advertised is measured over it too.")
        lease_s = declare(self, "liveliness_lease_s", ADVERT_LEASE_S,
                          "Liveliness lease offered on the adverts: the coordinator notices this host's loss within "
                          "its own host_lease_s, which must be at least this long.", low=0.01)
        probe_period_s = declare(self, "link_probe_period_s", 5.0,
                                 "Mean period of link probes to every peer heard in adverts (each round drawn from "
                                 "0.5 to 1.5 of it); also a probe's time-out.")
        emulated = declare(self, "emulated_links", Parameter.Type.STRING_ARRAY,
                           "PEER:LATENCY_S:BANDWIDTH_BPS links advertised instead of measured ones (tests, "
                           "benchmarks), e.g. ['edge_0:0.02:100e6']; those peers are not probed.")
        self._adapters = declare(self, "adapters", Parameter.Type.STRING_ARRAY,
                                 "LoRA adapters NAME=PATH every shard it loads serves (the shard's `adapters`); a "
                                 "load_module request's parameters_yaml may set its own.") or []
        self._battery = declare(self, "battery_fraction", math.nan,
                                "Battery charge 0..1 to advertise; NaN for a host without a battery.")
        self._trust = declare_trust(self, "publish plans that make this host load or unload shards, and call its "
                                    "load_module and unload_module services")

        def bound_yaml(**bound: int) -> None:  # live: the next load_module request is held to the new bound
            self._yaml_bounds = dataclasses.replace(self._yaml_bounds, **bound)

        self._yaml_bounds = YamlBounds(
            declare(self, "max_parameters_yaml_bytes", YamlBounds.max_bytes,
                    "Longest parameters_yaml a load_module request may carry, bytes.", low=0,
                    on_change=lambda v: bound_yaml(max_bytes=v)),
            declare(self, "max_parameters_yaml_depth", YamlBounds.max_depth,
                    "Deepest nesting of mappings and lists in a parameters_yaml.", low=1,
                    on_change=lambda v: bound_yaml(max_depth=v)),
            declare(self, "max_parameters_yaml_parameters", YamlBounds.max_parameters,
                    "Most parameters one parameters_yaml may set.", low=0,
                    on_change=lambda v: bound_yaml(max_parameters=v)))
        if role not in ROLES:
            raise ValueError(f"role '{role}' must be one of {ROLES}")
        if not (compute_scale > 0 and advert_period_s > 0 and diagnostics_period_s > 0 and probe_period_s > 0
                and memory_limit >= 0):
            raise ValueError("compute_scale, advert_period_s, diagnostics_period_s and link_probe_period_s must "
                             "be > 0, memory_limit_bytes >= 0")
        if not (math.isnan(self._battery) or 0.0 <= self._battery <= 1.0):
            raise ValueError(f"battery_fraction {self._battery} must be NaN or within [0, 1]")
        self._role = role
        # An emulated slower host runs slower too, as it is priced: its shards take 1/scale of their compute.
        self._slowdown = max(1.0, 1.0 / compute_scale)
        self._emulated = parse_emulated_links(emulated or [], self._host_id)
        # One thread, as a shard decodes: the figure ranks hosts the way their modules will run.
        self._gflops = scaled(reference_gflops(repeats=21, threads=1), compute_scale)
        self._bandwidth_gbps = scaled(reference_bandwidth_gbps(threads=1), compute_scale)
        self._memory_total = memory_limit or read_mem_available_bytes()
        self._cpu = read_cpu_sample()
        self._load = 0.0  # over the last diagnostics period
        self._following = PlanFollower(self._host_id, self._model, frozenset(MODELS))
        self._peers: dict[str, float] = {}  # host id -> time.monotonic() of its last advert
        self._prober = LinkProber(probe_period_s, self._host_id)
        self._loader = ComponentLoader(self, namespace or self.get_namespace())

        probe_topic = posixpath.join(posixpath.dirname(adverts_topic), "link_probe")
        self._adverts = self.create_publisher(ComputeAdvert, adverts_topic, with_lease(ADVERTS, lease_s))
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
        self._probes = self.create_publisher(TensorList, probe_topic, CONTROL)
        self._replies = self.create_publisher(TensorList, f"{probe_topic}_reply", CONTROL)
        self.create_subscription(ComputeAdvert, adverts_topic, self.on_advert, ADVERTS_READER)
        self._plan_channel = self.create_subscription(PlacementPlan, plan_topic, self.on_plan, LATCHED).topic_name
        self.create_subscription(TensorList, probe_topic, self.on_probe, CONTROL)
        self.create_subscription(TensorList, f"{probe_topic}_reply", self.on_probe_reply, CONTROL)
        services = ReentrantCallbackGroup()  # a load call awaits its component without holding up adverts
        self._load_channel = self.create_service(LoadModule, "~/load_module", self.on_load_module,
                                                 callback_group=services).service_name
        self._unload_channel = self.create_service(UnloadModule, "~/unload_module", self.on_unload_module,
                                                   callback_group=services).service_name
        # composition_interfaces' requests carry no signature: with trust on, the standard services stay off.
        standard = not self._trust.on and add_container_services(
            self, self._container_load, self._container_unload, self._loader.full_names, callback_group=services)
        self.create_timer(advert_period_s, self.advertise)
        self.create_timer(diagnostics_period_s, self.diagnose)
        self.create_timer(probe_period_s / PROBE_CHECKS, self.probe_peers)
        container = f"on {self.get_fully_qualified_name()}/_container" if standard else \
            "off (trust is on: they cannot be signed)" if self._trust.on else "off (not installed)"
        self.get_logger().info(
            f"host '{self._host_id}' ({role}): {self._gflops:.1f} GFLOP/s and {self._bandwidth_gbps:.2f} GB/s of "
            f"memory bandwidth (x{compute_scale}), "
            f"{self._memory_total / 2**30:.2f} GiB for modules; adverts on {self._adverts.topic_name}, "
            f"plans from {plan_topic}, emulated links {sorted(self._emulated) or 'none'}; standard container "
            f"services {container}"
        )

    def destroy_node(self) -> None:
        if self._loader is not None:
            self._loader.close()  # before the process ends: a loader thread left inside a build would abort it
        super().destroy_node()

    # -- adverts and diagnostics ---------------------------------------------------------------------------------

    def advertise(self) -> None:
        """Publish the advert: compute, the load of the last diagnostics period, memory, links, modules."""
        stamp_ns = self.get_clock().now().nanoseconds
        self._adverts.publish(self._trust.sign(to_advert_msg(self._advert(), stamp_ns, self._prober.measured_at_ns)))

    def _advert(self) -> Advert:
        return Advert(self._host_id, self._role, self._gflops, self._load,
                      max(0, self._memory_total - self._loader.held_memory_bytes()), self._memory_total,
                      (*self._emulated.values(), *self._prober.measures.values()),
                      None if math.isnan(self._battery) else self._battery, tuple(self._loader.running_modules()),
                      self._bandwidth_gbps)

    def diagnose(self) -> None:
        """Measure the load over the period since the last call, and publish /diagnostics."""
        sample = read_cpu_sample()
        self._load, self._cpu = load_between(self._cpu, sample), sample
        advert = self._advert()
        agent = Status(self.get_fully_qualified_name(), self._following.level,
                       f"{len(advert.modules_hosted)} modules running; {self._following.note}", self._host_id, {
                           "compute_gflops": f"{advert.compute_gflops:.3f}", "load": f"{advert.load:.3f}",
                           "memory_bandwidth_gbps": f"{advert.memory_bandwidth_gbps:.3f}",
                           "memory_total_bytes": str(advert.memory_total_bytes),
                           "memory_free_bytes": str(advert.memory_free_bytes),
                           "modules_hosted": " ".join(advert.modules_hosted), "peers": " ".join(sorted(self._peers)),
                           "trust": ("on, signing as " + self._trust.signer) if self._trust.on else "off",
                           **{f"refused {reason}": str(n) for reason, n in self._trust.refused().items()},
                       })
        stamp_ns = self.get_clock().now().nanoseconds
        self._diagnostics.publish(to_diagnostic_array([agent, *self._loader.statuses(self._host_id)], stamp_ns))

    # -- link probes ---------------------------------------------------------------------------------------------

    def on_advert(self, advert: ComputeAdvert) -> None:
        peer = advert.host_id
        if peer == self._host_id or not self._trust.accept(advert, self._adverts.topic_name, identity=peer):
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
        sent_ns = self.get_clock().now().nanoseconds
        nbytes = self._prober.bulk_bytes(peer) if bulk else SMALL_PROBE_BYTES
        probe = self._trust.sign(to_probe_msg(Probe(peer, self._host_id, sent_ns, nbytes)))
        self._prober.sent(peer, sent_ns, time.monotonic(), bulk=bulk)  # timed after signing: that is not the link
        self._probes.publish(probe)

    def on_probe(self, msg: TensorList) -> None:
        probe = from_probe_msg(msg)
        if probe is None or probe.addressee != self._host_id:
            return  # another agent's (not verified: a bulk probe costs a hash of its bytes)
        if self._trust.accept(msg, self._probes.topic_name, identity=probe.sender):
            self._replies.publish(self._trust.sign(to_probe_msg(probe.reply())))

    def on_probe_reply(self, msg: TensorList) -> None:
        arrived_s = time.monotonic()  # before the signature check: its cost is not the link's
        reply = from_probe_msg(msg)
        if reply is None or reply.addressee != self._host_id:
            return  # a reply to another agent
        # Only the probed host may answer: a forged reply would skew the link advertised, and the plan with it.
        if not self._trust.accept(msg, self._replies.topic_name, identity=reply.sender):
            return
        if self._prober.answered(reply.sender, reply.sent_ns, arrived_s, self.get_clock().now().nanoseconds):
            self._send_probe(reply.sender, bulk=True)

    # -- the plan ------------------------------------------------------------------------------------------------

    def on_plan(self, plan: PlacementPlan) -> None:
        # Any fleet key may sign a plan; a latched plan may be old (a late joiner's), so only the future is bounded.
        if not self._trust.accept(plan, self._plan_channel, max_age=False):
            return
        # With trust on, plans are ordered by the signed stamp: the header's is anyone's to set.
        stamp_ns = plan.signature.stamp_ns if self._trust.on else to_ns(plan.header.stamp)
        if not self._following.order.accept(plan.plan_id, plan.version, stamp_ns):
            self.get_logger().info(f"plan {plan.plan_id} v{plan.version} ignored: not newer than the one in force")
            return
        hosted = {name: Hosting(h.module_ids, h.asked_by == PLAN, bool(h.error), h.source)
                  for name, h in self._loader.hosted.items()}
        try:
            changes = self._following.follow(plan.plan_id, plan.version, plan.model_id, plan.wire_dtype,
                                             plan_assignments(plan), hosted, plan_standbys(plan),
                                             plan.weight_dtype)
        except ValueError as err:
            self.get_logger().error(self._following.unusable(plan.plan_id, plan.version, err))
            return
        for name in (*changes.forget, *changes.unload):
            self._loader.unload(name)
        reload = []
        for shard in changes.switch:  # first: a copy taking over serves the packets already on their way
            node = self._loader.hosted[shard.name].node
            if node is None:  # still loading with the other setting: load it again with this one
                self._loader.unload(shard.name)
                reload.append(shard)
            else:
                node.set_parameters([Parameter("standby", value=shard.standby)])
        for shard in changes.keep:
            if shard in reload:
                continue
            entry = self._loader.hosted[shard.name]
            entry.asked_by, entry.source, entry.memory_bytes = PLAN, shard, shard.group.memory_bytes
        for shard in (*changes.load, *reload):
            self._loader.load(Hosted(self._shard(shard), shard.module_ids, shard.group.memory_bytes, PLAN, shard))
        self.get_logger().info(
            f"{self._following.note}; loading {[s.name for s in changes.load]}, unloading {list(changes.unload)}, "
            f"keeping {[s.name for s in changes.keep]}"
            + "".join(f", {s.name} now {'a standby' if s.standby else 'serving'}" for s in changes.switch)
        )

    def _shard(self, shard: ShardLoad, extra: tuple[Parameter, ...] = ()) -> ComponentRequest:
        """A shard as a component; parameters of a load request may override the model, wire dtype, host and
        adapters."""
        defaults, identity = shard.parameters(self._host_id)
        if self._slowdown > 1.0:
            defaults["compute_slowdown"] = self._slowdown
        if self._adapters:
            defaults["adapters"] = list(self._adapters)
        # The shard signs and checks its packets with this host's key and the fleet's store, against the plan.
        return ComponentRequest("shard", shard.name, parameters=(
            *parameter_overrides(defaults), *extra,
            *parameter_overrides({**identity, **self._trust.parameters, "plan_topic": self._plan_channel})))

    # -- services ------------------------------------------------------------------------------------------------

    async def on_load_module(self, request: LoadModule.Request,
                             response: LoadModule.Response) -> LoadModule.Response:
        refusal = self._trust.refusal(request, self._load_channel)
        if refusal:
            response.success, response.message = False, f"load_module refused: {refusal}"
            return response
        try:
            entry = self._requested(request)
        except ValueError as err:
            self.get_logger().warning(f"load_module refused: {err}")
            response.success, response.message = False, str(err)
            return response
        response.success, response.message = await self._loader.loaded(entry)
        return response

    def _requested(self, request: LoadModule.Request) -> Hosted:
        """What a load_module request asks for, or ValueError saying why it cannot be loaded."""
        module = request.module
        extra = tuple(yaml_parameters(request.parameters_yaml, self._yaml_bounds))
        if module.kind == ModuleAssignment.KIND_ENCODER:
            # module_id names a component as compose does: KIND or KIND:NODE_NAME
            kind, _, node_name = module.module_id.partition(":")
            if kind not in COMPONENTS:
                raise ValueError(f"module_id '{module.module_id}' names no component kind "
                                 f"(KIND or KIND:NODE_NAME, KIND one of {', '.join(sorted(COMPONENTS))})")
            entry = Hosted(ComponentRequest(kind, node_name or kind, parameters=extra), (module.module_id,),
                           module.memory_bytes, "load_module")
        else:
            spec = module_of(module)  # ValueError for a kind that is not a model module, or a bad layer range
            if module.module_id and module.module_id != spec.module_id:
                raise ValueError(f"module_id '{module.module_id}' does not match the module's kind and layers "
                                 f"('{spec.module_id}')")
            if not (module.input_topic and module.output_topic):
                raise ValueError(f"module '{spec.module_id}' needs an input_topic and an output_topic")
            for parameter in extra:
                if parameter.name == "model":
                    self._following.model_of(str(parameter.value))  # a prepared model's id, never a folder
            group = ShardGroup((spec,), module.input_topic, module.output_topic, module.memory_bytes)
            shard = ShardLoad(group, self._following.model_of(request.model_id))
            entry = Hosted(self._shard(shard, extra), shard.module_ids, module.memory_bytes, "load_module", shard)
        self._loader.check_free(entry.name, entry.module_ids)
        return entry

    def on_unload_module(self, request: UnloadModule.Request,
                         response: UnloadModule.Response) -> UnloadModule.Response:
        refusal = self._trust.refusal(request, self._unload_channel)
        name = self._loader.held_modules().get(request.module_id)
        if refusal:
            response.success, response.message = False, f"unload_module refused: {refusal}"
        elif name is None:
            response.success = False
            response.message = (f"module '{request.module_id}' is not hosted here "
                                f"(hosted: {', '.join(self._loader.running_modules()) or 'none'})")
        else:
            entry = self._loader.unload(name)
            response.success = True
            response.message = f"unloaded {entry.name} ({', '.join(entry.module_ids)})"
        return response

    async def _container_load(self, request: ComponentRequest) -> tuple[bool, str, str]:
        """A component asked for through the standard container service (composition_interfaces)."""
        entry = Hosted(request, (f"{request.kind}:{request.name}",), 0, "load_node")
        try:
            self._loader.check_free(entry.name, entry.module_ids)
        except ValueError as err:
            return False, str(err), ""
        success, message = await self._loader.loaded(entry)
        return success, message, entry.node.get_fully_qualified_name() if success else ""

    def _container_unload(self, name: str) -> bool:
        if name not in self._loader.hosted:
            return False
        self._loader.unload(name)
        return True


def main(args: list[str] | None = None) -> None:
    spin_node(HostAgentNode, args)


if __name__ == "__main__":
    main()
