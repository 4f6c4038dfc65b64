"""The model chain and the fleet across emulated hosts: each host a network namespace, every byte between hosts UDP
through the emulated links (the inter-host Fast DDS profile, SUBNET discovery), the test's client on the edge host.

The client runs in a fresh process that enters the edge host's namespace before it creates any ROS participant
(``in_host``): Fast DDS never lets a process's participant created in one network namespace be discovered when the
process created one in another namespace before (even one destroyed since), and pytest's process has made many.
Answers are compared, token for token, with the whole model's greedy answers computed in this process
(test/model_reference.py). Needs root (network namespaces); skipped otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from edge_lam_msgs.msg import ComputeAdvert, InferenceRequest, InferenceResult, PlacementPlan

from conftest import REPORTED
from edge_lam.demo.graph import DemoConfig, HostSpec, SensorTopic, demo_processes
from edge_lam.hosts import EmulatedHosts, LinkShape, down_prefix, has_rights
from edge_lam.hosts.joining import joined
from edge_lam.ros.qos import ADVERTS_READER, CONTROL, LATCHED
from model_reference import greedy_tokens
from ros_client import RosClient

pytestmark = pytest.mark.skipif(not has_rights(), reason="emulated hosts are network namespaces: needs root "
                                "(CAP_NET_ADMIN and CAP_SYS_ADMIN)")

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
CONFIG = pathlib.Path(get_package_share_directory("edge_lam")) / "config"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 12
# The robot's slowed link, each way: decode priced by bytes costs the 0.25x edge alone ~350 ms a token, so only a
# link whose two crossings cost more than that moves the robot's modules off it.
SLOW_LINK_MS = 300
PROMPTS = ["Name three things a delivery robot checks before leaving.", "Why do robots need maps?",
           "Describe a forklift in one sentence."]
PREFIX = f"el{os.environ['ROS_DOMAIN_ID']}n"  # this run's namespaces: el<domain>n-robot, el<domain>n-edge
# SmolLM2 cut in two: every token crosses the robot's link twice (edge -> robot -> edge).
FRONT = ["-p", "modules:=[embedding, 'blocks:0:15']", "-p", "output_topic:=chain/hidden_15", "-p", "host_id:=robot"]
BACK = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15", "-p", "host_id:=edge"]
CLIENT_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    return greedy_tokens(PROMPTS, MAX_NEW)


@pytest.fixture
def hosts(monkeypatch) -> Iterator[EmulatedHosts]:
    """A robot and an edge host, taken apart (with any process left in them) whatever the test did. Every process
    started meanwhile gets the inter-host profile and SUBNET discovery."""
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(CONFIG / "fastdds_interhost.xml"))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    down_prefix(PREFIX)  # what a crashed run of this domain left
    with EmulatedHosts(["robot", "edge"], prefix=PREFIX) as emulated:
        yield emulated


def in_host(hosts: EmulatedHosts, host: str, function, *args):
    """``function(*args)`` in a fresh process inside ``host``'s namespace; its result, or its exception raised here."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply_async(_joined_call, (hosts.namespace(host), function, args)).get(CLIENT_TIMEOUT_S)
    finally:
        pool.terminate()
        pool.join()


def _joined_call(namespace: str, function, args):
    with joined(namespace):
        return function(*args)


def start_split_chain(processes, hosts: EmulatedHosts) -> str:
    """The two shards and the gateway in their hosts; their ROS namespace."""
    namespace = f"net_{uuid.uuid4().hex[:8]}"
    ns = ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"model:={MODEL}"]
    processes.start(*hosts.command("robot", [str(LIB / "shard"), *ns, "-r", "__node:=front", *FRONT]))
    processes.start(*hosts.command("edge", [str(LIB / "shard"), *ns, "-r", "__node:=back", *BACK]))
    processes.start(*hosts.command("edge", [str(LIB / "gateway"), *ns, "-p", "plan_topic:=''"]))
    return namespace


class Asker:
    """A client of one gateway (in the client process): asks, collects the streamed chunks, checks the answers."""

    def __init__(self, name: str, namespace: str) -> None:
        self.client = RosClient(name, namespace)
        self.results = self.client.collect(InferenceResult, "results", CONTROL)
        self.requests = self.client.publisher(InferenceRequest, "requests", CONTROL, timeout_s=120)

    def ask(self, prompt: str, max_new_tokens: int = MAX_NEW) -> str:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new_tokens
        self.requests.publish(request)
        return request.request_id

    def serving(self) -> bool:
        """Ask once (the gateway refuses until the chain is connected); True once it answered without error."""
        request_id = self.ask("Hi", 1)
        self.client.spin_until(lambda: self.answered({request_id}), 5)
        return any(r.final and r.request_id == request_id and not r.error_code for r in self.results)

    def answered(self, ids) -> bool:
        return sum(1 for r in self.results if r.final and r.request_id in ids) >= len(ids)

    def answers(self, ids: dict[str, str]) -> dict[str, tuple[int, str, list[int]]]:
        """Per prompt: how many final results its request got, the final's error, its tokens."""
        answers = {}
        for request_id, prompt in ids.items():
            chunks = [r for r in self.results if r.request_id == request_id]
            finals = [r for r in chunks if r.final]
            answers[prompt] = (len(finals), finals[-1].error_message if finals and finals[-1].error_code else "",
                               [t for r in chunks for t in r.token_ids])
        return answers

    def close(self) -> None:
        self.client.close()


def check_answers(answers: dict[str, tuple[int, str, list[int]]], reference: dict[str, list[int]]) -> None:
    for prompt, (finals, error, tokens) in answers.items():
        assert finals == 1, f"{prompt!r} got {finals} final results"
        assert not error, f"{prompt!r} failed: {error}"
        assert tokens == reference[prompt], prompt


def _ask_over_a_lossy_link(namespace: str) -> dict:
    hosts = EmulatedHosts.attach(PREFIX)
    asker = Asker("net_client", namespace)
    try:
        assert asker.client.spin_until(asker.serving, 240), "the chain across the hosts did not come up"
        lossy = LinkShape(latency_ms=50, loss=0.05)
        hosts.set_link("robot", up=lossy, down=lossy)
        before, started = hosts.counters("robot"), time.monotonic()
        ids = {asker.ask(prompt): prompt for prompt in PROMPTS}
        assert asker.client.spin_until(lambda: asker.answered(ids), 240), "not every request ended"
        seconds = time.monotonic() - started
        # Results come in order on one topic: once a request sent now is answered, a second final of those before
        # it would have come too.
        assert asker.client.spin_until(asker.serving, 60), "the gateway stopped serving"
        after = hosts.counters("robot")
        dropped = sum(d["dropped"] for d in hosts.forwarder_stats()["hosts"]["robot"].values())
        return {"answers": asker.answers(ids), "seconds": seconds, "dropped": dropped,
                "wire_bytes": (after.rx_bytes - before.rx_bytes) + (after.tx_bytes - before.tx_bytes)}
    finally:
        asker.close()


def test_every_request_gets_one_correct_answer_over_a_slow_lossy_link(processes, hosts, reference):
    run = in_host(hosts, "edge", _ask_over_a_lossy_link, start_split_chain(processes, hosts))
    check_answers(run["answers"], reference)
    assert run["dropped"] > 0, "the link dropped nothing: the loss was not applied"
    REPORTED.append(f"network: {len(PROMPTS)} requests over 50 ms / 5% loss each way, all answered once with the "
                    f"whole model's tokens in {run['seconds']:.1f} s; robot's link {run['wire_bytes'] / 1024:.0f} "
                    f"KiB, {run['dropped']} frames dropped")


def _ask_through_a_cut(namespace: str) -> dict:
    hosts = EmulatedHosts.attach(PREFIX)
    asker = Asker("net_client", namespace)
    tokens = lambda: sum(1 for r in asker.results if r.token_ids)  # noqa: E731
    try:
        assert asker.client.spin_until(asker.serving, 240), "the chain across the hosts did not come up"
        ids = {asker.ask(prompt): prompt for prompt in PROMPTS}
        assert asker.client.spin_until(lambda: tokens() >= 3, 60), "no tokens came"
        hosts.cut("robot")
        cut_at = tokens()
        asker.client.spin_for(10.0)
        during = tokens() - cut_at
        hosts.restore("robot")
        assert asker.client.spin_until(lambda: asker.answered(ids), 180), "not every request ended"
        assert asker.client.spin_until(asker.serving, 60), "the gateway stopped serving"
        return {"answers": asker.answers(ids), "during": during}
    finally:
        asker.close()


def test_requests_in_flight_survive_a_10_s_cut_of_the_robots_link(processes, hosts, reference):
    """The robot's link is cut for 10 s while three requests generate. Nothing is replayed (a step times out
    after 60 s): reliable DDS resends what the cut dropped once the link is back, and every request completes with
    the whole model's tokens and exactly one final result."""
    run = in_host(hosts, "edge", _ask_through_a_cut, start_split_chain(processes, hosts))
    # A step already past the robot when the link went may still finish: one per request at most.
    assert run["during"] <= len(PROMPTS), f"{run['during']} tokens came while the robot was cut off"
    check_answers(run["answers"], reference)
    REPORTED.append(f"network: a 10 s cut of the robot's link during generation: {len(PROMPTS)} requests in flight "
                    "all completed once with the whole model's tokens")


def _fleet_follows_the_link(reference: dict[str, list[int]]) -> dict:
    hosts = EmulatedHosts.attach(PREFIX)
    asker = Asker("net_fleet_client", "/edge_lam")
    client = asker.client
    plans = client.collect(PlacementPlan, "plan", LATCHED)
    adverts = client.collect(ComputeAdvert, "adverts", ADVERTS_READER)
    logs = client.collect_logs()
    on_robot = lambda plan: sum(1 for m in plan.modules if m.host_id == "robot")  # noqa: E731

    def robot_link_s() -> float:
        """The newest estimate of the robot-edge link, measured from either end."""
        links = [lk for a in adverts for lk in a.links if {a.host_id, lk.peer_host_id} == {"robot", "edge"}]
        return links[-1].latency_s if links else float("nan")

    try:
        assert client.spin_until(lambda: plans and on_robot(plans[-1]) > 0, 240), \
            f"no plan with modules on the robot: {[on_robot(p) for p in plans]}"
        fast_plan = plans[-1]
        assert client.spin_until(asker.serving, 180), "the fleet's chain did not answer"
        ids = {asker.ask(prompt): prompt for prompt in PROMPTS}
        assert client.spin_until(lambda: asker.answered(ids), 180), "not every request was answered"
        check_answers(asker.answers(ids), reference)
        fast_link_s = robot_link_s()

        slow = LinkShape(latency_ms=SLOW_LINK_MS)
        hosts.set_link("robot", up=slow, down=slow)
        # The estimate is the least of the last rounds' round trips: it rises once every kept round is slow.
        assert client.spin_until(lambda: robot_link_s() > 0.8 * SLOW_LINK_MS / 1e3, 60), \
            f"the probes saw {robot_link_s()} s"
        slow_link_s = robot_link_s()
        assert client.spin_until(lambda: on_robot(plans[-1]) < on_robot(fast_plan), 90), \
            f"the plan kept {on_robot(plans[-1])} modules on the robot over a {SLOW_LINK_MS} ms link"
        slow_plan = plans[-1]
        ids = {asker.ask(PROMPTS[0]): PROMPTS[0]}
        assert client.spin_until(lambda: asker.answered(ids), 180), "no answer after the plan moved"
        check_answers(asker.answers(ids), reference)

        hosts.cut("robot")
        assert client.spin_until(lambda: any("host 'robot' left" in log.msg for log in logs), 30), \
            "the coordinator did not take the cut-off robot as gone"
        return {"fast_link_s": fast_link_s, "slow_link_s": slow_link_s, "fast_on_robot": on_robot(fast_plan),
                "slow_on_robot": on_robot(slow_plan)}
    finally:
        asker.close()


def test_the_demo_fleet_across_hosts_answers_as_the_whole_model_and_its_plan_follows_the_measured_link(
        processes, hosts, reference, tmp_path):
    """The demo's fleet (host agents, coordinator, gateway: graph.demo_processes) in two hosts. The robot computes
    far faster than the edge (x4 against x0.25 of this machine) but holds only part of the model; the edge can hold
    all of it. On a fast link the coordinator gives the robot modules and the chain answers with the whole model's
    tokens. Slowed to SLOW_LINK_MS each way, the agents' probes measure it and the plan moves modules off the robot
    (every token would cross the link twice). Cut, the robot stops advertising and the coordinator takes it as gone."""
    params = tmp_path / "demo.yaml"
    params.write_text((CONFIG / "demo.yaml").read_text())
    config = DemoConfig(robot_id="tb3", hosts=(HostSpec.parse("robot:robot:4.0:320"),
                                               HostSpec.parse("edge:edge:0.25:1400")),
                        model=MODEL, sensors=(SensorTopic(tmp_path, "/odom", "nav_msgs/msg/Odometry", 1.0),),
                        period_s=5.0, max_new_tokens=MAX_NEW, start_offset_s=0.0, params_file=params)
    for spec in demo_processes(config, LIB):
        if spec.name.startswith(("host_agent", "coordinator", "gateway")):
            probing = ["-p", "link_probe_period_s:=1.0"] if spec.name.startswith("host_agent") else []
            processes.start(*hosts.command(spec.host, [*spec.argv, *probing]))
    run = in_host(hosts, "edge", _fleet_follows_the_link, reference)
    assert run["fast_link_s"] < 0.02, run
    assert 0.8 * SLOW_LINK_MS / 1e3 < run["slow_link_s"] < 2 * SLOW_LINK_MS / 1e3, run
    REPORTED.append(f"network fleet: robot link measured {run['fast_link_s'] * 1e3:.1f} ms, then "
                    f"{run['slow_link_s'] * 1e3:.0f} ms at {SLOW_LINK_MS} ms each way; modules on the robot "
                    f"{run['fast_on_robot']} -> {run['slow_on_robot']}; a cut robot was taken as gone")
