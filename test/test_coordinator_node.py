"""The coordinator as its own process, fed real ComputeAdverts of fake hosts by this process over Fast DDS.

Each fake host has a writer of its own, as each host agent does, so destroying one loses that host's liveliness
only. The model is SmolLM2-135M (30 layers): 746 MB with a 2048-token KV cache, so two hosts of 500 MB must split it.
The coordinator logs at debug level, so that its /rosout shows every look that keeps the plan in force: a test that
no new plan came first sees the coordinator look at the changed fleet.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from edge_lam_msgs.msg import ComputeAdvert, LinkEstimate, ModuleAssignment, PlacementPlan

from conftest import finish, requires_gemma
from edge_lam.ros.qos import ADVERTS, LATCHED
from ros_client import RosClient

MB = 10**6
ADVERT_PERIOD_S = 0.5  # as the host agents advertise
KEPT = re.compile(r"keeping plan v(\d+) \(the plan in force: ([\d.]+) ms; best ([\d.]+) ms\)")


class FakeHosts:
    """Adverts of fake hosts, published every half second while the client spins, one writer per host."""

    def __init__(self, client: RosClient, topic: str) -> None:
        self.client, self.topic = client, topic
        self.adverts: dict[str, ComputeAdvert] = {}
        self.writers: dict = {}
        self.silent: set[str] = set()
        client.node.create_timer(ADVERT_PERIOD_S, self.publish)

    def set(self, host_id: str, gflops: float, memory: int, load: float = 0.0, total: int | None = None,
            peers: tuple[str, ...] = ()) -> None:
        links = [LinkEstimate(peer_host_id=p, latency_s=0.001, bandwidth_bps=1e9) for p in peers]
        self.adverts[host_id] = ComputeAdvert(
            host_id=host_id, role=ComputeAdvert.ROLE_EDGE, compute_gflops=gflops, load=load,
            memory_free_bytes=memory, memory_total_bytes=memory if total is None else total, links=links)
        if host_id not in self.writers:
            self.writers[host_id] = self.client.node.create_publisher(ComputeAdvert, self.topic, ADVERTS)

    def destroy(self, host_id: str) -> None:
        """The host's writer goes away, as when its agent's process ends: its liveliness is lost at once."""
        self.client.node.destroy_publisher(self.writers.pop(host_id))

    def publish(self) -> None:
        for host_id, writer in self.writers.items():
            if host_id not in self.silent:
                advert = self.adverts[host_id]
                advert.header.stamp = self.client.node.get_clock().now().to_msg()
                writer.publish(advert)


@dataclasses.dataclass
class Fleet:
    client: RosClient
    hosts: FakeHosts
    plans: list  # every PlacementPlan received, in order
    logs: list  # every Log on /rosout, in order
    plan_topic: str
    process: subprocess.Popen

    def wait_plan(self, version: int, timeout_s: float) -> PlacementPlan:
        assert self.client.spin_until(lambda: any(p.version >= version for p in self.plans), timeout_s), \
            f"no plan v{version} within {timeout_s} s; got versions {[p.version for p in self.plans]}"
        (plan,) = [p for p in self.plans if p.version == version]
        return plan

    def wait_log(self, pattern: re.Pattern, timeout_s: float, accept: Callable[[re.Match], bool] = bool) -> re.Match:
        """The first line the coordinator logs (debug included) that matches ``pattern`` and is accepted."""
        def found() -> re.Match | None:
            matches = (pattern.search(log.msg) for log in self.logs if log.name == "coordinator")
            return next((m for m in matches if m and accept(m)), None)

        assert self.client.spin_until(found, timeout_s), f"the coordinator logged no line like {pattern.pattern!r}"
        return found()

    def output(self) -> str:
        """Stop the coordinator and return its log."""
        self.process.send_signal(signal.SIGINT)
        return finish(self.process, timeout_s=10)[1]


@pytest.fixture
def start_fleet(processes):
    """Start a coordinator with the given parameters on topics of this test's own, and a client to feed it."""
    clients = []

    def start(**parameters: float) -> Fleet:
        namespace = f"/coord_{uuid.uuid4().hex[:8]}"
        adverts, plan_topic = f"{namespace}/adverts", f"{namespace}/plan"
        parameters = {"settle_s": 1.0, "replan_period_s": 0.5, **parameters}
        client = RosClient("coordinator_test_client")
        clients.append(client)
        logs = client.collect_logs()
        process = processes.start(
            sys.executable, "-m", "edge_lam.fleet.coordinator_node", "--ros-args", "--log-level", "coordinator:=debug",
            "-p", f"adverts_topic:={adverts}", "-p", f"plan_topic:={plan_topic}",
            *(arg for name, value in parameters.items() for arg in ("-p", f"{name}:={value}")),
        )
        return Fleet(client, FakeHosts(client, adverts), client.collect(PlacementPlan, plan_topic, LATCHED), logs,
                     plan_topic, process)

    yield start
    for client in clients:
        client.close()


def hosts_of(plan: PlacementPlan) -> set[str]:
    return {m.host_id for m in plan.modules}


def hosts_of_copies(plan: PlacementPlan) -> set[str]:
    return {m.host_id for m in plan.standbys}


def check_whole_chain(plan: PlacementPlan) -> None:
    """Every module of the model is assigned once, in chain order, each reading what the previous one writes."""
    kinds = [m.kind for m in plan.modules]
    assert kinds[0] == ModuleAssignment.KIND_EMBEDDING and kinds[-1] == ModuleAssignment.KIND_HEAD
    assert set(kinds[1:-1]) == {ModuleAssignment.KIND_BLOCKS}
    blocks = [(m.layer_start, m.layer_end) for m in plan.modules[1:-1]]
    assert blocks[0][0] == 0 and blocks[-1][1] == 30
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    assert plan.modules[0].input_topic == "chain/input" and plan.modules[-1].output_topic == "chain/output"
    assert all(a.output_topic == b.input_topic for a, b in itertools.pairwise(plan.modules))
    assert all(m.memory_bytes > 0 for m in plan.modules)
    assert plan.expected_latency_s > 0 and plan.solver == "exact_dp" and plan.model_id == "smollm2-135m-instruct"
    assert str(uuid.UUID(plan.plan_id)) == plan.plan_id


def test_plans_follow_joins_and_load_with_hysteresis(start_fleet):
    fleet = start_fleet(standby_copies="false")
    fleet.hosts.set("a", 10.0, 500 * MB, peers=("b",))
    fleet.hosts.set("b", 30.0, 500 * MB)
    first = fleet.wait_plan(1, 60)  # the coordinator's start includes importing torch
    check_whole_chain(first)
    assert hosts_of(first) == {"a", "b"}  # neither holds all 746 MB
    late = fleet.client.collect(PlacementPlan, fleet.plan_topic, LATCHED)
    assert fleet.client.spin_until(lambda: late, 10), "a late subscriber did not get the plan in force"
    assert late[-1].plan_id == first.plan_id

    fleet.hosts.set("c", 100.0, 2000 * MB)
    second = fleet.wait_plan(2, 10)
    check_whole_chain(second)
    assert hosts_of(second) == {"c"}

    # b grows to 95 GFLOP/s and c's load to 10 % (90 GFLOP/s left): b would be 5 % faster, under the 10 % margin.
    # The coordinator looks again (the plan in force re-priced on c's 90 GFLOP/s, b's 95 the best) and keeps v2.
    fleet.hosts.set("b", 95.0, 2000 * MB)
    fleet.hosts.set("c", 100.0, 2000 * MB, load=0.1)
    in_force_ms, best_ms = (second.expected_latency_s * 1e3 * 100 / gflops for gflops in (90.0, 95.0))
    fleet.wait_log(KEPT, 10, lambda m: m[1] == "2" and float(m[2]) == pytest.approx(in_force_ms, abs=0.006)
                   and float(m[3]) == pytest.approx(best_ms, abs=0.006))
    assert [p.version for p in fleet.plans] == [1, 2], "modules moved for a gain below the hysteresis margin"
    fleet.hosts.set("c", 100.0, 2000 * MB, load=0.6)  # 40 GFLOP/s left: b is more than twice as fast
    third = fleet.wait_plan(3, 10)
    assert hosts_of(third) == {"b"}
    # the gateway's hops are free, so one host's latency is its compute: 100 against 95 GFLOP/s
    assert third.expected_latency_s == pytest.approx(second.expected_latency_s * 100 / 95)
    assert "host 'c' joined" in fleet.output()


def test_hosts_that_die_or_go_silent_lose_their_modules_to_standby_copies_and_no_fit_keeps_the_last_plan(
        start_fleet):
    fleet = start_fleet(host_timeout_s=4.0)
    fleet.hosts.set("p", 50.0, 2000 * MB)
    fleet.hosts.set("q", 100.0, 2000 * MB)
    fleet.hosts.set("r", 20.0, 2000 * MB)
    first = fleet.wait_plan(1, 60)
    assert hosts_of(first) == {"q"} and hosts_of_copies(first) == {"p"}  # the copy where it would run fastest
    assert [m.module_id for m in first.standbys] == [m.module_id for m in first.modules]

    # q's writer goes: the liveliness loss names no host, but q then misses its adverts, long before the 4 s timeout
    fleet.hosts.destroy("q")
    second = fleet.wait_plan(2, 30)
    assert hosts_of(second) == {"p"}, "q's modules did not move to their standby copy"
    assert second.solver == "standby" and hosts_of_copies(second) == {"r"}
    fleet.wait_log(re.compile(r"plan v2 \(host 'q' left, silent since a writer lost liveliness: its standby "
                              r"copies take over\)"), 10)

    # p stays alive (its writer asserts liveliness) but stops advertising: gone after the advert timeout
    fleet.hosts.silent.add("p")
    third = fleet.wait_plan(3, 30)
    assert hosts_of(third) == {"r"} and not third.standbys
    fleet.wait_log(re.compile(r"plan v3 \(host 'p' left, no advert for 4 s"), 10)

    # r shrinks to 300 MB: no placement fits anywhere, so the plan in force stays and the coordinator says why
    fleet.hosts.set("r", 20.0, 300 * MB)
    fleet.wait_log(re.compile(r"load, memory or links changed: no feasible placement \(.+\); keeping plan v3"), 10)
    assert [p.version for p in fleet.plans] == [1, 2, 3]
    late = fleet.client.collect(PlacementPlan, fleet.plan_topic, LATCHED)
    assert fleet.client.spin_until(lambda: late, 10) and late[-1].plan_id == third.plan_id
    assert "an advert writer lost liveliness" in fleet.output()


def test_robot_exit_puts_the_deepest_trained_exit_the_first_hosts_blocks_reach(start_fleet):
    from edge_lam.model.exits import available_exits  # torch: not at collection

    trained = sorted(available_exits("smollm2-135m-instruct"))
    assert trained, "run `edge-lam prepare` to train the exits"
    fleet = start_fleet(robot_exit=True)
    fleet.hosts.set("robot", 10.0, 450 * MB, peers=("edge",))
    fleet.hosts.set("edge", 30.0, 450 * MB)
    plan = fleet.wait_plan(1, 60)
    first = plan.modules[0].host_id
    reach = max(m.layer_end for m in plan.modules if m.host_id == first and m.kind == ModuleAssignment.KIND_BLOCKS)
    (exit_module,) = [m for m in plan.modules if m.kind == ModuleAssignment.KIND_EXIT]
    layer = max(t for t in trained if t <= reach)  # neither host holds the 746 MB: the first one reaches layer 11+
    assert (exit_module.host_id, exit_module.layer_start, exit_module.layer_end) == (first, layer, layer)
    assert exit_module.input_topic == exit_module.output_topic == f"chain/hidden_{layer}"
    assert exit_module.memory_bytes == (2 * 576 * 64 + 576) * 4  # adapter and norm: the robot holds the tied head
    # The rest is still the whole chain, each module reading what the one before writes.
    assert all(a.output_topic == b.input_topic for a, b in itertools.pairwise(plan.modules))
    blocks = [(m.layer_start, m.layer_end) for m in plan.modules if m.kind == ModuleAssignment.KIND_BLOCKS]
    assert blocks[0][0] == 0 and blocks[-1][1] == 30 and all(a[1] == b[0] for a, b in itertools.pairwise(blocks))


@requires_gemma
def test_the_model_parameter_places_gemma_and_asks_no_exit_of_it(start_fleet):
    """Gemma 3 270M (18 layers, a 640 MiB fp32 embedding tied to the head): neither 1000 MB host holds its 1.15 GB
    (weights and a 2048-token KV cache), so the plan splits it; robot_exit finds no exit trained for it and plans
    none."""
    fleet = start_fleet(model="gemma3-270m", robot_exit=True, standby_copies="false")
    fleet.hosts.set("robot", 10.0, 1000 * MB, peers=("edge",))
    fleet.hosts.set("edge", 30.0, 1000 * MB)
    plan = fleet.wait_plan(1, 60)
    assert plan.model_id == "gemma3-270m" and hosts_of(plan) == {"robot", "edge"}
    kinds = [m.kind for m in plan.modules]
    assert kinds[0] == ModuleAssignment.KIND_EMBEDDING and kinds[-1] == ModuleAssignment.KIND_HEAD
    assert ModuleAssignment.KIND_EXIT not in kinds
    blocks = [(m.layer_start, m.layer_end) for m in plan.modules[1:-1]]
    assert blocks[0][0] == 0 and blocks[-1][1] == 18 and all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    assert all(a.output_topic == b.input_topic for a, b in itertools.pairwise(plan.modules))
    assert plan.modules[0].memory_bytes == 262144 * 640 * 4  # priced from Gemma's shapes
    fleet.wait_log(re.compile(r"robot_exit: no exits trained for gemma3-270m"), 10)
