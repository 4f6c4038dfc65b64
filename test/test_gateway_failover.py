"""Failover in the gateway: a shard killed (-9) mid-generation and started again; every request in flight is
replayed on the chain as it is then and completes with the whole model's greedy tokens, each with one final result."""

from __future__ import annotations

import pathlib
import signal
import uuid

from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceRequest, InferenceResult

from conftest import REPORTED
from edge_lam.ros.qos import CONTROL
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 40
PROMPTS = ["Name three things a delivery robot checks before leaving.", "Why do robots need maps?",
           "Describe a forklift in one sentence."]


def test_requests_in_flight_survive_a_killed_shard(processes):
    namespace = f"failover_{uuid.uuid4().hex[:8]}"
    ns = ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"model:={MODEL}"]
    front = ["-p", "modules:=[embedding, 'blocks:0:15']", "-p", "output_topic:=chain/hidden_15"]
    back = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15"]
    processes.start(LIB / "shard", *ns, "-r", "__node:=front", *front)
    back_shard = processes.start(LIB / "shard", *ns, "-r", "__node:=back", *back)
    processes.start(LIB / "gateway", *ns, "-p", "step_timeout_s:=3.0", "-p", "plan_topic:=''")
    client = RosClient("failover_client", namespace)
    results = client.collect(InferenceResult, "results", CONTROL)
    try:
        reference = greedy_tokens(PROMPTS, MAX_NEW)  # while the shards and the gateway start
        requests = client.publisher(InferenceRequest, "requests", CONTROL, timeout_s=120)
        ready = client.spin_until(lambda: _probe(client, requests, results), 120)
        assert ready, "the chain did not come up"
        results.clear()
        ids = {}
        for prompt in PROMPTS:
            request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
            request.options.max_new_tokens = MAX_NEW
            ids[request.request_id] = prompt
            requests.publish(request)
        assert client.spin_until(lambda: sum(1 for r in results if r.token_ids) >= 5, 60), "no tokens came"
        back_shard.send_signal(signal.SIGKILL)
        back_shard.wait(timeout=10)
        processes.start(LIB / "shard", *ns, "-r", "__node:=back", *back)  # a replacement, as a coordinator would
        finals = lambda: [r for r in results if r.final and r.request_id in ids]  # noqa: E731
        assert client.spin_until(lambda: len(finals()) >= len(ids), 180), "not every request was answered"
        # Results come in order on one topic: once a request sent now is answered, any second final of those
        # before it would have come too.
        assert client.spin_until(lambda: _probe(client, requests, results), 60), "the gateway stopped serving"
    finally:
        client.close()
    assert sorted(r.request_id for r in finals()) == sorted(ids), "a request got more or fewer than one final"
    for request_id, prompt in ids.items():
        chunks = [r for r in results if r.request_id == request_id]
        final = chunks[-1]
        assert final.error_code == InferenceResult.ERROR_NONE, final.error_message
        tokens = [t for r in chunks for t in r.token_ids]
        assert tokens == reference[prompt], prompt
    REPORTED.append(f"gateway failover: {len(ids)} requests in flight when a shard was killed, all completed "
                    "with the whole model's greedy tokens")


def _probe(client: RosClient, requests, results) -> bool:
    """Ask until the gateway serves (it refuses until the chain is connected); True once it answered a request."""
    request = InferenceRequest(request_id=uuid.uuid4().hex, prompt="Hi")
    request.options.max_new_tokens = 1
    requests.publish(request)
    client.spin_until(lambda: any(r.final and r.request_id == request.request_id for r in results), 5)
    return any(r.final and r.request_id == request.request_id and not r.error_code for r in results)
