"""The model chain across emulated hosts: each host a network namespace, every byte between hosts UDP through the
emulated links (the inter-host Fast DDS profile, SUBNET discovery), the test's client joining the edge host.

SmolLM2 is cut in two: embedding and blocks 0-15 on the robot, blocks 15-30 and the head with the gateway on the
edge, so every token crosses the robot's link twice. Answers are compared, token for token, with the whole model's
greedy answers computed in this process (test/model_reference.py). Needs root (network namespaces); skipped
otherwise.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from edge_lam_msgs.msg import InferenceRequest, InferenceResult

from conftest import REPORTED
from edge_lam.hosts import EmulatedHosts, LinkShape, down_prefix, has_rights
from edge_lam.hosts.joining import joined
from edge_lam.ros.qos import CONTROL
from model_reference import greedy_tokens
from ros_client import RosClient

pytestmark = pytest.mark.skipif(not has_rights(), reason="emulated hosts are network namespaces: needs root "
                                "(CAP_NET_ADMIN and CAP_SYS_ADMIN)")

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
PROFILE = pathlib.Path(get_package_share_directory("edge_lam")) / "config" / "fastdds_interhost.xml"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 12
PROMPTS = ["Name three things a delivery robot checks before leaving.", "Why do robots need maps?",
           "Describe a forklift in one sentence."]
PREFIX = f"el{os.environ['ROS_DOMAIN_ID']}n"  # this run's namespaces: el<domain>n-robot, el<domain>n-edge
FRONT = ["-p", "modules:=[embedding, 'blocks:0:15']", "-p", "output_topic:=chain/hidden_15", "-p", "host_id:=robot"]
BACK = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15", "-p", "host_id:=edge"]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    return greedy_tokens(PROMPTS, MAX_NEW)


@pytest.fixture
def hosts() -> Iterator[EmulatedHosts]:
    """A robot and an edge host, taken apart (with any process left in them) whatever the test did."""
    down_prefix(PREFIX)  # what a crashed run of this domain left
    with EmulatedHosts(["robot", "edge"], prefix=PREFIX) as emulated:
        yield emulated


@pytest.fixture
def interhost(monkeypatch) -> dict[str, str]:
    """The environment of every process across hosts, this test's client included."""
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE), "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


class SplitChain:
    """The two shards and the gateway in their hosts, and a client on the edge host that asks and collects."""

    def __init__(self, processes, hosts: EmulatedHosts, *gateway_params: str) -> None:
        self.namespace = f"net_{uuid.uuid4().hex[:8]}"
        ns = ["--ros-args", "-r", f"__ns:=/{self.namespace}", "-p", f"model:={MODEL}"]
        processes.start(*hosts.command("robot", [str(LIB / "shard"), *ns, "-r", "__node:=front", *FRONT]))
        processes.start(*hosts.command("edge", [str(LIB / "shard"), *ns, "-r", "__node:=back", *BACK]))
        processes.start(*hosts.command("edge", [str(LIB / "gateway"), *ns, "-p", "plan_topic:=''",
                                                *gateway_params]))
        with joined(hosts.namespace("edge")):
            self.client = RosClient("net_client", self.namespace)
        self.results = self.client.collect(InferenceResult, "results", CONTROL)
        self.requests = self.client.publisher(InferenceRequest, "requests", CONTROL, timeout_s=60)

    def wait_until_serving(self, timeout_s: float = 180.0) -> None:
        assert self.client.spin_until(self._probe, timeout_s), "the chain across the hosts did not come up"
        self.results.clear()

    def _probe(self) -> bool:
        request_id = self.ask("Hi", 1)
        self.client.spin_until(lambda: any(r.final and r.request_id == request_id for r in self.results), 5)
        return any(r.final and r.request_id == request_id and not r.error_code for r in self.results)

    def ask(self, prompt: str, max_new_tokens: int = MAX_NEW) -> str:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new_tokens
        self.requests.publish(request)
        return request.request_id

    def finals(self, ids) -> list[InferenceResult]:
        return [r for r in self.results if r.final and r.request_id in ids]

    def answers(self, ids: dict[str, str]) -> dict[str, list[int]]:
        """Each request's tokens, after checking it got exactly one final result and no error."""
        finals = sorted(r.request_id for r in self.finals(ids))
        assert finals == sorted(ids), "a request got more or fewer than one final"
        answers = {}
        for request_id in ids:
            chunks = [r for r in self.results if r.request_id == request_id]
            assert chunks[-1].error_code == InferenceResult.ERROR_NONE, chunks[-1].error_message
            answers[request_id] = [t for r in chunks for t in r.token_ids]
        return answers

    def close(self) -> None:
        self.client.close()


def test_every_request_gets_one_correct_answer_over_a_slow_lossy_link(processes, hosts, interhost, reference):
    chain = SplitChain(processes, hosts)
    try:
        chain.wait_until_serving()
        lossy = LinkShape(latency_ms=50, loss=0.05)
        hosts.set_link("robot", up=lossy, down=lossy)
        before = hosts.counters("robot")
        started = time.monotonic()
        ids = {chain.ask(prompt): prompt for prompt in PROMPTS}
        assert chain.client.spin_until(lambda: len(chain.finals(ids)) >= len(ids), 240), "not every request ended"
        seconds = time.monotonic() - started
        # Results come in order on one topic: once a request sent now is answered, a second final of those before
        # it would have come too.
        assert chain.client.spin_until(chain._probe, 60), "the gateway stopped serving"
        after = hosts.counters("robot")
        answers = chain.answers(ids)
    finally:
        chain.close()
    for request_id, prompt in ids.items():
        assert answers[request_id] == reference[prompt], prompt
    dropped = sum(d["dropped"] for d in hosts.forwarder_stats()["hosts"]["robot"].values())
    assert dropped > 0, "the link dropped nothing: the loss was not applied"
    wire = (after.rx_bytes - before.rx_bytes) + (after.tx_bytes - before.tx_bytes)
    REPORTED.append(f"network: {len(ids)} requests over 50 ms / 5% loss each way, all answered once with the "
                    f"whole model's tokens in {seconds:.1f} s; robot's link {wire / 1024:.0f} KiB, "
                    f"{dropped} frames dropped")
