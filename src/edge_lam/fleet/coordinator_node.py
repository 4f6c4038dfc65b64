"""The coordinator: hears the host agents' ComputeAdverts, places the model's modules and publishes the plan.

The decisions are ``coordination.Coordinator``'s; this node translates adverts, liveliness events and a clock to it
and its plans to a transient-local PlacementPlan, so that an agent that starts late still gets the plan in force.
No deadline QoS on the adverts: a reader that requests one does not match writers that offer none, and the advert
timeout does the same job for writers of any QoS.

Started with ``standby`` true it is a standby coordinator (``fleet.standby``): its core hears the adverts like the
active one's, it follows the plans on the topic, publishes nothing, and takes over when the active coordinator's plan
writer loses liveliness (its lease is ``plan_lease_s``), continuing from the last plan and its version.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

from edge_lam_msgs.msg import ComputeAdvert, PlacementPlan
from rclpy.event_handler import QoSLivelinessChangedInfo, QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.subscription import MessageInfo

from edge_lam.assets.cache import EXIT_MODEL
from edge_lam.descriptors import check_weight_dtype, wire_dtype_bytes
from edge_lam.fleet.coordination import Chain, Coordinator, Decision, FleetFull, Policy, placement_table
from edge_lam.fleet.model_pricing import price_in_child
from edge_lam.fleet.standby import TakeOver, adopted_plan, adopted_standbys
from edge_lam.placement.assignments import Assignment, assignments
from edge_lam.placement.exits import with_exit
from edge_lam.placement.standbys import copies
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.ros.qos import ADVERT_LEASE_S, ADVERTS_READER, LATCHED, with_lease
from edge_lam.ros.received import received_at
from edge_lam.ros.trust import declare_trust
from edge_lam.wire.fleet import from_advert_msg, plan_assignments, plan_standbys, to_plan_msg

PLAN_LEASE_S = 0.3  # as the adverts': a standby hears the active coordinator's death within it
CONFIRM_LOSS_S = 0.1  # and takes over only when its plan writer is still lost this long after (fleet.standby.TakeOver)
TICK_S = 0.1  # how often timeouts and the settling are checked; a look at the fleet costs far more than this check


def in_force(decision: Decision) -> str:
    """How the plan in force fares on the fleet of a decision, for the log."""
    current = decision.current
    if current is None:
        return "no plan in force"
    if not current.feasible:
        return f"the plan in force broke: {'; '.join(current.problems)}"
    return f"the plan in force: {current.expected_latency_s * 1e3:.2f} ms"


def standby_text(decision: Decision) -> str:
    """Where the idle copies are, for the log."""
    return ", ".join(f"units {s.start}..{s.end - 1} on {s.host_id}" for s in decision.standbys) or "none"


class CoordinatorNode(Node):
    """Places ``model`` on the hosts advertising on ``adverts_topic`` and publishes plans on ``plan_topic``."""

    def __init__(self, node_name: str = "coordinator", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._model = declare(self, "model", "smollm2-135m-instruct", "Model id or folder whose modules are placed.")
        adverts = declare(self, "adverts_topic", "/edge_lam/adverts", "ComputeAdvert topic of the host agents.")
        plans = declare(self, "plan_topic", "/edge_lam/plan", "PlacementPlan topic (transient-local).")
        gateway = declare(self, "gateway_host", "", "Host where requests enter and answers leave (the chain's source "
                          "and sink); empty: the gateway's hops cost nothing.")
        context = declare(self, "context_tokens", 2048, "Tokens of KV cache each module must have room for.")
        self._wire_dtype = declare(self, "wire_dtype", "float16",
                                   "Dtype of hidden states between modules: float16, bfloat16 or float32; plans are "
                                   "priced with it and every shard of a plan sends in it.")
        self._weight_dtype = declare(self, "weight_dtype", "float32", "Precision every shard of a plan holds its "
                                     "weights in: float32, bfloat16, float16 or int8 (weight-only); plans are priced "
                                     "with it.")
        self._use_load = declare(self, "use_load", True, "Count each host's advertised load against its compute; "
                                 "false when the hosts share one machine, where each one's load is the others' work.")
        lease_s = declare(self, "host_lease_s", ADVERT_LEASE_S, "Liveliness lease requested of the host agents' "
                          "advert writers: a host killed is noticed within it. Agents must offer one no longer "
                          "(their liveliness_lease_s), or their adverts are not heard.", low=0.01)
        policy = Policy(
            host_timeout_s=declare(self, "host_timeout_s", 2.0, "A host whose last advert is older is gone.",
                                   on_change=lambda v: self.tune(host_timeout_s=v), low=0.01),
            min_gain=declare(self, "min_gain", 0.1, "Move modules only for a plan faster by more than this fraction "
                             "of the expected latency of the plan in force (hysteresis).",
                             on_change=lambda v: self.tune(min_gain=v), low=0.0),
            min_gain_s=declare(self, "min_gain_s", 0.0, "Move modules only for a plan faster by more than this many "
                               "seconds per token, too.", on_change=lambda v: self.tune(min_gain_s=v), low=0.0),
            replan_period_s=declare(self, "replan_period_s", 1.0, "How often changes of load, memory or links are "
                                    "re-evaluated (joins and leaves are at once).",
                                    on_change=lambda v: self.tune(replan_period_s=v), low=0.0),
            settle_s=declare(self, "settle_s", 1.0, "After the first advert, wait this long for other hosts before "
                             "the first plan."),
            max_hosts=declare(self, "max_hosts", 64, "Hosts the fleet may have; adverts of new hosts beyond it are "
                              "not taken (a flood of invented hosts costs nothing).",
                              on_change=lambda v: self.tune(max_hosts=v), low=1),
            min_look_interval_s=declare(self, "min_look_interval_s", 0.25, "Joins are placed at once, but no more "
                                        "often than this, s: a burst of joins costs one look.",
                                        on_change=lambda v: self.tune(min_look_interval_s=v), low=0.0),
            standbys=declare(self, "standby_copies", True, "Keep an idle copy of every segment on a second host where "
                             "memory allows: a host's loss is then a re-route to the copy, not a model load."),
        )
        standby = declare(self, "standby", False, "Start as a standby coordinator: hear the adverts, follow the plans, "
                          "publish nothing, and take over when the active coordinator's plan writer loses liveliness "
                          "(or none is alive settle_s + plan_lease_s after the start).")
        self._plan_lease_s = declare(self, "plan_lease_s", PLAN_LEASE_S, "Liveliness lease the plan writer offers "
                                     "and a standby's plan reader requests: a standby hears within it that the active "
                                     "coordinator died. Every coordinator of a fleet must use the same one.", low=0.01)
        self._trust = declare_trust(self, "advertise invented hosts and be given the model's modules, and publish "
                                    "plans in the coordinator's place")
        wire_dtype_bytes(self._wire_dtype)  # ValueError naming the choices
        check_weight_dtype(self._weight_dtype)
        robot_exit = declare(self, "robot_exit", False, "Add to every plan the deepest trained early exit that the "
                             "blocks of the chain's first host (the robot) reach (edge-lam exits lists them).")
        # torch stays out of this process
        priced = price_in_child(self._model, self._wire_dtype, robot_exit, self._weight_dtype)
        units, num_layers = priced.units, priced.num_layers
        self._core = Coordinator(Chain(units, num_layers, gateway, context), policy)
        self._exits = priced.exits
        if priced.overhead_error:
            self.get_logger().warning(f"decode step overhead not measured ({priced.overhead_error}): plans are "
                                      "priced on the roofline alone and expect less than the chain takes")
        else:
            self.get_logger().info(
                f"decode step overhead {priced.step_overhead_s * 1e3:.2f} ms per unit on this host "
                f"({priced.reference_gflops:.1f} GFLOP/s), priced on each host at its GFLOP/s beside the roofline; "
                f"the model's {self._weight_dtype} matrices stream at {priced.read_efficiency:.2f} of a host's "
                "advertised bandwidth")
        if robot_exit and not self._exits:
            self.get_logger().warning(f"robot_exit: no exits trained for {self._model} (`edge-lam prepare` trains "
                                      f"{EXIT_MODEL}'s); plans carry none")
        self._version = 0
        self._last_error = ""
        self._lease_s = lease_s
        self._plan_topic = plans
        self._latched: PlacementPlan | None = None  # the last plan heard on the topic, while a standby

        self._plans: Publisher | None = None if standby else self.create_plan_publisher()
        self._plan_reader = self.create_subscription(
            PlacementPlan, plans, self.on_plan, with_lease(LATCHED, self._plan_lease_s),
            event_callbacks=SubscriptionEventCallbacks(liveliness=self.on_plan_writers,
                                                       incompatible_qos=self.on_incompatible_plan_writer),
        ) if standby else None
        self._adverts = self.create_subscription(
            ComputeAdvert, adverts, self.on_advert, with_lease(ADVERTS_READER, lease_s),
            event_callbacks=SubscriptionEventCallbacks(liveliness=self.on_liveliness_changed,
                                                       incompatible_qos=self.on_incompatible_advert))
        self._take_over = TakeOver(time.monotonic(), policy.settle_s + self._plan_lease_s, active=not standby,
                                   confirm_s=CONFIRM_LOSS_S)
        self._ticker = self.create_timer(TICK_S, self.on_tick)
        self.get_logger().info(
            f"placing {self._model} ({len(units)} units, {num_layers} layers) on hosts advertising on "
            f"{self._adverts.topic_name}; plans on {self.resolve_topic_name(plans)}"
            f"{' as a standby' if standby else ''}; gateway {gateway or '(free hops)'}; hysteresis "
            f"{policy.min_gain:.0%} / {policy.min_gain_s} s"
        )

    def tune(self, **change: float) -> None:
        """A live policy parameter was set (`ros2 param set`): the core's next look uses it."""
        self._core.policy = dataclasses.replace(self._core.policy, **change)
        self.get_logger().info(f"policy now {self._core.policy}")

    def create_plan_publisher(self) -> Publisher:
        """The plan writer, with the liveliness a standby watches; readers that request no lease match it too."""
        return self.create_publisher(PlacementPlan, self._plan_topic, with_lease(LATCHED, self._plan_lease_s))

    @property
    def active(self) -> bool:
        return self._take_over.active

    def on_plan(self, msg: PlacementPlan) -> None:
        """A standby keeps the newest plan it trusts: the one it continues from when it takes over."""
        if self.active or not self._trust.accept(msg, self._plan_reader.topic_name, max_age=False):
            return
        latched = self._latched
        if latched is None or (msg.plan_id, msg.version) != (latched.plan_id, latched.version):
            self.get_logger().info(f"standby: following plan {msg.plan_id} v{msg.version} of the active coordinator")
        self._latched = msg

    def on_plan_writers(self, info: QoSLivelinessChangedInfo) -> None:
        if not self.active:
            self.get_logger().info(f"standby: {info.alive_count} live plan writers")
        self.take_over(self._take_over.writers(info.alive_count, time.monotonic()))

    def on_incompatible_plan_writer(self, info: QoSRequestedIncompatibleQoSInfo) -> None:
        self.get_logger().error(
            f"a plan writer does not match ({info.total_count} so far; policy {info.last_policy_kind}): a "
            f"coordinator offers a liveliness lease longer than plan_lease_s {self._plan_lease_s} s, so this "
            "standby cannot watch it and would take over while it lives", throttle_duration_sec=10.0)

    def take_over(self, why: str | None) -> None:
        """Become the active coordinator: the plan writer, the last plan as the plan in force, its version
        continued, and a look at the fleet at once (a host may have died with the coordinator)."""
        if why is None:
            return
        log = self.get_logger()
        if self._plan_reader is not None:
            self.destroy_subscription(self._plan_reader)
            self._plan_reader = None
        self._plans = self.create_plan_publisher()
        latched, self._latched = self._latched, None
        self._core.adopt(None)  # what the core made of the adverts while a standby was never published
        if latched is None:
            log.info(f"taking over with no plan to continue: {why}")
        else:
            self._version = latched.version
            try:
                self.adopt(latched)
                log.info(f"taking over from plan {latched.plan_id} v{latched.version}: {why}")
            except ValueError as error:
                log.error(f"taking over from plan {latched.plan_id} v{latched.version}: {why}; its modules cannot "
                          f"be the plan in force ({error}), so the next plan is placed afresh")
        published = self._version
        self.on_tick()
        if self._version == published and self._core.plan is not None:
            # The plan in force stays: it goes out again from this live writer, for agents and gateways that start
            # later (the dead coordinator's latched copy went with it).
            self.publish(Decision("taking over: the plan in force, published again", tuple(self._core.hosts()),
                                  standbys=self._core.standbys))

    def adopt(self, msg: PlacementPlan) -> None:
        """The plan in the message as the core's plan in force, with its standby copies; ValueError when the
        message's modules are not this model's chain."""
        if msg.model_id and msg.model_id != self._model:
            raise ValueError(f"it places model {msg.model_id}, this coordinator {self._model}")
        chain = self._core.chain
        plan = adopted_plan(plan_assignments(msg), chain.units, chain.context_tokens, msg.expected_latency_s,
                            msg.solver)
        self._core.adopt(plan, adopted_standbys(plan_standbys(msg), plan, chain.units))

    def on_advert(self, msg: ComputeAdvert, info: MessageInfo) -> None:
        # An advert counts only when signed by the host it describes: a key holder cannot speak for another host.
        if not self._trust.accept(msg, self._adverts.topic_name, identity=msg.host_id):
            return
        try:
            advert = from_advert_msg(msg, self._use_load)
        except ValueError as error:
            self.get_logger().warning(f"rejected advert: {error}", throttle_duration_sec=10.0)
            return
        try:
            decision = self._core.advert(advert, received_at(info))
            if self.active:
                self.act(decision)
        except FleetFull as full:
            self.get_logger().warning(str(full), throttle_duration_sec=10.0)

    def on_liveliness_changed(self, info: QoSLivelinessChangedInfo) -> None:
        if info.not_alive_count_change < 0 and info.alive_count_change > 0:  # a lease missed, not a process lost
            self.get_logger().info(f"an advert writer is alive again ({info.alive_count} alive)")
            self._core.liveliness_regained(info.alive_count_change)
        elif info.alive_count_change < 0 or info.not_alive_count_change > 0:
            self.get_logger().info(f"an advert writer lost liveliness ({info.alive_count} alive); "
                                   "the host that stops advertising is taken as gone")
            self._core.liveliness_lost(time.monotonic(), max(-info.alive_count_change, info.not_alive_count_change))
            if self.active:
                self.on_tick()  # a host silent long enough already is the lost one: no need to wait for the tick

    def on_incompatible_advert(self, info: QoSRequestedIncompatibleQoSInfo) -> None:
        self.get_logger().error(
            f"an advert writer does not match ({info.total_count} so far; policy {info.last_policy_kind}): a host "
            f"agent offers a liveliness lease longer than host_lease_s {self._lease_s} s: its adverts go unheard",
            throttle_duration_sec=10.0)

    def on_tick(self) -> None:
        now = time.monotonic()
        if not self.active:  # the core hears adverts but decides nothing: the active coordinator does
            self.take_over(self._take_over.tick(now, self.count_publishers(self._plan_reader.topic_name)))
            return
        self.act(self._core.tick(now))

    def act(self, decision: Decision | None) -> None:
        """Publish a new plan, or say why the plan in force stays."""
        if decision is None:
            return
        log = self.get_logger()
        if decision.error:
            if decision.error != self._last_error:
                kept = f"keeping plan v{self._version}" if self._version else "no plan yet"
                log.error(f"{decision.reason}: no feasible placement ({decision.error}); {kept}")
            self._last_error = decision.error
            return
        self._last_error = ""
        if decision.plan is None and decision.standbys_changed:
            self.publish(decision)
            return
        if decision.plan is None:
            best = decision.best.expected_latency_s * 1e3 if decision.best else math.inf
            message = f"{decision.reason}: keeping plan v{self._version} ({in_force(decision)}; best {best:.2f} ms)"
            if decision.routine:  # a look every replan_period_s: kept plans are the rule, not news
                log.debug(message)
            else:
                log.info(message)
            return
        self.publish(decision)

    def publish(self, decision: Decision) -> None:
        """The plan in force (new, or with new standby copies) as the next version."""
        core = self._core
        plan = decision.plan or core.plan
        assert plan is not None
        primaries = assignments(plan, core.chain.units, decision.hosts, core.chain.num_layers)
        standbys = copies(primaries, plan, core.chain.units, decision.standbys)
        assigned = self.with_robot_exit(primaries, decision)
        self._version += 1
        assert self._plans is not None, "a standby publishes no plan"
        self._plans.publish(self._trust.sign(to_plan_msg(
            str(uuid.uuid4()), self._version, self._model, self._wire_dtype, assigned, plan.expected_latency_s,
            plan.solver, self.get_clock().now().nanoseconds, core.chain.gateway_host, standbys,
            self._weight_dtype)))
        if decision.plan is None:
            self.get_logger().info(f"plan v{self._version} ({decision.reason}): the plan in force, standby copies "
                                   f"now {standby_text(decision)}")
            return
        was = "" if decision.current is None else f"; {in_force(decision)}"
        self.get_logger().info(
            f"plan v{self._version} ({decision.reason}): {plan.expected_latency_s * 1e3:.2f} ms per token expected"
            f"{was}; solver {plan.solver}; hosts {', '.join(core.host_ids)}; standby copies {standby_text(decision)}"
            f"\n{placement_table(plan, assigned)}"
        )

    def with_robot_exit(self, assigned: list[Assignment], decision: Decision) -> list[Assignment]:
        if not self._exits or not assigned:
            return assigned
        first = assigned[0].host_id
        gflops = next((h.gflops for h in decision.hosts if h.host_id == first), 0.0)
        return with_exit(assigned, tuple(self._exits), self._exits.__getitem__, gflops)


def main(args: list[str] | None = None) -> None:
    spin_node(CoordinatorNode, args)


if __name__ == "__main__":
    main()
