"""The whole fleet in real processes: host agents, the coordinator and the gateway serve SmolLM2 on the plan; a
host with more compute joins and takes modules; a host killed (-9) mid-generation loses no request, and every
answer is the whole model's greedy output."""

from __future__ import annotations

import pathlib
import signal
import sys
import uuid

from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import ComputeAdvert, InferenceRequest, InferenceResult, PlacementPlan

from conftest import REPORTED
from edge_lam.ros.qos import ADVERTS_READER, CONTROL, LATCHED
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 32
PROMPTS = ["What does a robot's lidar measure?", "Give one tip for charging batteries safely.",
           "Describe a warehouse aisle in one sentence."]


class Fleet:
    def __init__(self, processes) -> None:
        self.processes = processes
        self.namespace = f"fleet_{uuid.uuid4().hex[:8]}"
        self.adverts_topic, self.plan_topic = f"/{self.namespace}/adverts", f"/{self.namespace}/plan"
        self.agents: dict = {}

    def ros_args(self, *params: str) -> list[str]:
        args = ["--ros-args", "-r", f"__ns:=/{self.namespace}", "-p", f"adverts_topic:={self.adverts_topic}",
                "-p", f"plan_topic:={self.plan_topic}"]
        for param in params:
            args += ["-p", param]
        return args

    def agent(self, host_id: str, compute_scale: float):
        self.agents[host_id] = self.processes.start(
            sys.executable, "-m", "edge_lam.fleet.host_agent_node", *self.ros_args(
                f"host_id:={host_id}", f"compute_scale:={compute_scale}", f"model:={MODEL}"),
            "-r", f"__node:=agent_{host_id}")
        return self.agents[host_id]

    def coordinator(self) -> None:
        self.processes.start(sys.executable, "-m", "edge_lam.fleet.coordinator_node",
                             *self.ros_args(f"model:={MODEL}", "settle_s:=2.0"))

    def gateway(self) -> None:
        self.processes.start(LIB / "gateway", *self.ros_args(f"model:={MODEL}", "step_timeout_s:=3.0"))


def hosts_of(plan: PlacementPlan) -> set[str]:
    return {m.host_id for m in plan.modules}


def ask(client: RosClient, requests, results, prompts: list[str]) -> dict[str, str]:
    ids = {}
    for prompt in prompts:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = MAX_NEW
        ids[request.request_id] = prompt
        requests.publish(request)
    return ids


def answered(results: list[InferenceResult], ids: dict[str, str]) -> list[InferenceResult]:
    return [r for r in results if r.final and r.request_id in ids]


def tokens_of(results: list[InferenceResult], request_id: str) -> list[int]:
    return [t for r in results if r.request_id == request_id for t in r.token_ids]


def test_the_fleet_serves_on_the_plan_rebalances_on_a_join_and_survives_a_killed_host(processes):
    fleet = Fleet(processes)
    client = RosClient("fleet_client", fleet.namespace)
    plans = client.collect(PlacementPlan, fleet.plan_topic, LATCHED)
    adverts = client.collect(ComputeAdvert, fleet.adverts_topic, ADVERTS_READER)
    results = client.collect(InferenceResult, "results", CONTROL)
    try:
        fleet.agent("robot", 0.25)
        fleet.agent("edge_0", 1.0)
        fleet.coordinator()
        fleet.gateway()
        reference = greedy_tokens(PROMPTS, MAX_NEW)  # while the fleet starts
        requests = client.publisher(InferenceRequest, "requests", CONTROL, timeout_s=120)
        assert client.spin_until(lambda: plans, 90), "no plan"
        first = plans[-1]
        assert {m.host_id for m in first.modules} <= {"robot", "edge_0"} and len(first.modules) >= 3

        # The plan serves: a request answered as the whole model answers it (the gateway refuses until connected).
        def serve_one() -> bool:
            ids = ask(client, requests, results, PROMPTS[:1])
            client.spin_until(lambda: answered(results, ids), 60)
            done = answered(results, ids)
            return bool(done) and not done[0].error_code and tokens_of(results, done[0].request_id) == \
                reference[PROMPTS[0]]
        assert client.spin_until(serve_one, 180), "the fleet did not serve on its first plan"

        # A host with more compute joins and takes modules.
        fleet.agent("edge_1", 4.0)
        assert client.spin_until(lambda: "edge_1" in hosts_of(plans[-1]), 90), "the faster host got no module"
        moved = plans[-1]
        assert (moved.plan_id, moved.version) != (first.plan_id, first.version)
        assert client.spin_until(
            lambda: any(a.host_id == "edge_1" and a.modules_hosted for a in adverts[-20:]), 90
        ), "edge_1 never hosted its modules"

        # Its modules get a standby copy on another host, loaded idle there.
        def copies_loaded() -> bool:
            copies = plans[-1].standbys
            hosted = {a.host_id: set(a.modules_hosted) for a in adverts[-20:]}
            return bool(copies) and all(c.module_id in hosted.get(c.host_id, ()) for c in copies)
        assert client.spin_until(copies_loaded, 90), "no standby copy was loaded"
        copies = plans[-1].standbys

        # The host that holds modules is killed mid-generation: its modules move to their copies, and every request
        # still completes, correctly.
        at_kill = plans[-1]
        victim = sorted(hosts_of(at_kill))[-1]
        assert victim not in {c.host_id for c in copies}
        results.clear()
        ids = ask(client, requests, results, PROMPTS)
        assert client.spin_until(lambda: sum(1 for r in results if r.token_ids) >= 4, 120), "no tokens before kill"
        fleet.agents[victim].send_signal(signal.SIGKILL)
        fleet.agents[victim].wait(timeout=10)
        assert client.spin_until(lambda: len(answered(results, ids)) >= len(ids), 240), "requests were lost"
        assert client.spin_until(lambda: victim not in hosts_of(plans[-1]), 30), "the killed host kept its modules"
        rerouted = next(p for p in plans if victim not in hosts_of(p) and p.version > moved.version)
        assert rerouted.solver == "standby", "the loss was not a re-route to the standby copies"
        copy_host = {c.module_id: c.host_id for c in copies}
        assert {m.module_id: m.host_id for m in rerouted.modules} == {
            m.module_id: copy_host[m.module_id] if m.host_id == victim else m.host_id for m in at_kill.modules}
        # Results come in order on one topic: once a request sent now is answered, any second final of those
        # before it would have come too.
        after = ask(client, requests, results, PROMPTS[:1])
        assert client.spin_until(lambda: answered(results, after), 120), "the fleet stopped serving"
    finally:
        client.close()
    finals = answered(results, ids)
    assert sorted(r.request_id for r in finals) == sorted(ids), "a request got more or fewer than one final"
    for final in finals:
        assert final.error_code == InferenceResult.ERROR_NONE, final.error_message
        assert tokens_of(results, final.request_id) == reference[ids[final.request_id]]
    REPORTED.append(f"fleet: {victim} killed with {len(ids)} requests in flight; all completed with the whole "
                    f"model's greedy tokens on plan v{plans[-1].version} ({sorted(hosts_of(plans[-1]))})")
