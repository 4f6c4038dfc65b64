"""A standby coordinator, in real processes over Fast DDS: host agents serve SmolLM2 on the active coordinator's plan;
the active coordinator is killed (-9) and the standby takes over within about the plan writer's lease, continuing the
plan's version; the agents follow it; a host killed afterwards has its modules re-placed by the new active one. And a
standby started with no active coordinator becomes active by itself."""

from __future__ import annotations

import re
import sys
import time
import uuid

from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import ComputeAdvert, PlacementPlan
from parameter_calls import set_parameters
from rclpy.qos import QoSProfile

from edge_lam.ros.qos import ADVERTS, LATCHED
from ros_client import RosClient

MODEL = "smollm2-135m-instruct"
TAKE_OVER = re.compile(r"taking over from plan (\S+) v(\d+): the active coordinator's plan writer lost liveliness")


class Fleet:
    """Processes on a namespace of their own, and a client that hears the plans, /diagnostics and /rosout."""

    def __init__(self, processes) -> None:
        self.processes = processes
        self.namespace = f"standby_{uuid.uuid4().hex[:8]}"
        self.adverts_topic, self.plan_topic = f"/{self.namespace}/adverts", f"/{self.namespace}/plan"
        self.client = RosClient("standby_test_client", self.namespace)
        self.plans: list[PlacementPlan] = self.client.collect(PlacementPlan, self.plan_topic, LATCHED)
        self.diagnostics: list[DiagnosticArray] = self.client.collect(DiagnosticArray, "/diagnostics",
                                                                      QoSProfile(depth=50))
        self.logs = self.client.collect_logs()

    def start(self, module: str, node: str, *params: str):
        return self.processes.start(
            sys.executable, "-m", module, "--ros-args", "-r", f"__ns:=/{self.namespace}", "-r", f"__node:={node}",
            "-p", f"adverts_topic:={self.adverts_topic}", "-p", f"plan_topic:={self.plan_topic}",
            *(arg for param in params for arg in ("-p", param)))

    def agent(self, host_id: str, compute_scale: float):
        return self.start("edge_lam.fleet.host_agent_node", f"agent_{host_id}", f"host_id:={host_id}",
                          f"compute_scale:={compute_scale}", f"model:={MODEL}")

    def coordinator(self, node: str, *params: str):
        return self.start("edge_lam.fleet.coordinator_node", node, f"model:={MODEL}", "use_load:=false",
                          "settle_s:=1.0", *params)

    def wait(self, done, timeout_s: float, what: str):
        assert self.client.spin_until(done, timeout_s), what
        return done()

    def log(self, node: str, pattern: re.Pattern) -> re.Match | None:
        matches = (pattern.search(log.msg) for log in self.logs if log.name.endswith(node))
        return next((m for m in matches if m), None)

    def note(self, host_id: str) -> str:
        """The newest /diagnostics message of that host's agent ("N modules running; plan ID vN: ...")."""
        name = f"/{self.namespace}/agent_{host_id}"
        return next((s.message for a in reversed(self.diagnostics) for s in a.status if s.name == name), "")

    def close(self) -> None:
        self.client.close()


def hosts_of(plan: PlacementPlan) -> set[str]:
    return {m.host_id for m in plan.modules}


def hosts_of_copies(plan: PlacementPlan) -> set[str]:
    return {m.host_id for m in plan.standbys}


def test_a_standby_takes_over_from_a_killed_coordinator_continuing_its_plan_and_re_places_a_host_lost_later(
        processes):
    fleet = Fleet(processes)
    try:
        agents = {host: fleet.agent(host, scale) for host, scale in (("a", 8.0), ("b", 2.0))}
        active = fleet.coordinator("coordinator")
        # The first plan: the model on one host, its copy on the other, followed by the agents
        first = fleet.wait(lambda: next((p for p in fleet.plans if p.standbys), None), 90, "no plan with copies")
        assert len(first.modules) >= 3 and hosts_of(first).isdisjoint(hosts_of_copies(first))
        fleet.wait(lambda: all(f"plan {first.plan_id} v{first.version}" in fleet.note(h) for h in agents), 60,
                   f"the agents did not follow plan v{first.version}")
        # The standby starts once the active coordinator's plan writer is there, hears the plan and waits
        fleet.coordinator("coordinator_standby", "standby:=true")
        following = re.compile(rf"standby: following plan {fleet.plans[-1].plan_id} v{fleet.plans[-1].version}\b")
        fleet.wait(lambda: fleet.log("coordinator_standby", following), 60, "the standby did not follow the plan")
        latched = fleet.plans[-1]

        active.kill()
        killed_at = time.monotonic()
        taken = fleet.wait(lambda: next((p for p in fleet.plans if p.version == latched.version + 1), None), 20,
                           f"no plan v{latched.version + 1} after the active coordinator was killed")
        print(f"standby coordinator: plan v{taken.version} {time.monotonic() - killed_at:.2f} s after kill -9 "
              "of the active one (as received by this client)")
        took = fleet.wait(lambda: fleet.log("coordinator_standby", TAKE_OVER), 10, "the standby logged no take-over")
        assert (took[1], int(took[2])) == (latched.plan_id, latched.version)
        # the same modules and copies: nothing moved for the coordinator's death
        assert [(m.module_id, m.host_id) for m in taken.modules] == [(m.module_id, m.host_id) for m in latched.modules]
        assert [(m.module_id, m.host_id) for m in taken.standbys] == \
            [(m.module_id, m.host_id) for m in latched.standbys]
        fleet.wait(lambda: all(f"plan {taken.plan_id} v{taken.version}" in fleet.note(h) for h in agents), 30,
                   f"the agents did not follow the new active coordinator's plan v{taken.version}")

        # A host lost after the take-over: the new active coordinator re-places its modules
        lost = taken.modules[0].host_id
        agents[lost].kill()
        moved = fleet.wait(lambda: next((p for p in fleet.plans if p.version > taken.version
                                         and lost not in hosts_of(p)), None), 30,
                           f"host {lost}'s modules were not re-placed after it was killed")
        assert hosts_of(moved) == hosts_of_copies(taken)  # where the copy was
        print(f"after host {lost} was lost: plan v{moved.version}, solver {moved.solver}")
        now_serving = sorted(hosts_of(moved))
        fleet.wait(lambda: all(f"plan {moved.plan_id} v{moved.version}" in fleet.note(h) for h in now_serving), 60,
                   f"agents {now_serving} did not follow plan v{moved.version}")
        assert re.search(r"[1-9]\d* shards here", fleet.note(now_serving[0])), fleet.note(now_serving[0])
    finally:
        fleet.close()


def test_a_standby_with_no_active_coordinator_becomes_active_on_its_own_and_its_policy_is_live(processes):
    fleet = Fleet(processes)
    try:
        # one host's adverts, from this client's own writer (its liveliness asserted by this process)
        writer = fleet.client.node.create_publisher(ComputeAdvert, fleet.adverts_topic, ADVERTS)
        advert = ComputeAdvert(host_id="solo", role=ComputeAdvert.ROLE_EDGE, compute_gflops=50.0,
                               memory_free_bytes=4 * 10**9, memory_total_bytes=4 * 10**9)

        silent = []

        def publish() -> None:
            if silent:
                return
            advert.header.stamp = fleet.client.node.get_clock().now().to_msg()
            writer.publish(advert)
        fleet.client.node.create_timer(0.1, publish)

        fleet.coordinator("coordinator", "standby:=true")
        plan = fleet.wait(lambda: fleet.plans[-1] if fleet.plans else None, 60, "the standby never published a plan")
        assert plan.version == 1 and hosts_of(plan) == {"solo"}
        took = re.compile(r"taking over with no plan to continue: no live plan writer within 1.3 s of starting")
        fleet.wait(lambda: fleet.log("coordinator", took), 10, "the standby did not say why it took over")

        # The policy's thresholds are live, `standby` is not: a host silent for the new timeout is gone
        node = f"/{fleet.namespace}/coordinator"
        timeout, standby = set_parameters(fleet.client, node, host_timeout_s=0.5, standby=False)
        assert timeout.successful and not standby.successful, (timeout, standby)
        silent.append(True)  # its writer lives (no liveliness loss): only the advert timeout tells
        gone = re.compile(r"host 'solo' left, no advert for 0.5 s")
        fleet.wait(lambda: fleet.log("coordinator", gone), 10, "the new host_timeout_s did not take effect")
    finally:
        fleet.close()
