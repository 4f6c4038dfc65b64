"""A standby gateway, over real DDS between real processes: alone, it serves after its grace (a request sent while no
gateway served is answered); watching an active one, it leaves the active one's action clients alone; when the
active one is killed (-9) mid-stream, it answers the topic request and the service call in flight exactly once,
chunks going on where the killed one stopped (the one on its way at the kill may come twice, with its index), with
the whole model's greedy tokens; it adopts the action goal in flight, whose client gets the rest as feedback and
the whole answer as its result."""

from __future__ import annotations

import pathlib
import signal
import time
import uuid

from action_msgs.msg import GoalStatus
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.action import Generate as GenerateAction
from edge_lam_msgs.msg import InferenceRequest, InferenceResult
from edge_lam_msgs.srv import Generate
from rclpy.action import ActionClient

from conftest import REPORTED
from edge_lam.model.loading import load_tokenizer
from edge_lam.ros.qos import CONTROL
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 32
TOPIC_PROMPT = "Name three things a delivery robot checks before leaving."
CALL_PROMPT = "Describe a forklift in one sentence."
GOAL_PROMPT = "Why do robots need maps?"


def test_a_standby_gateway_serves_alone_and_takes_over_a_killed_one_mid_stream(processes):
    reference = greedy_tokens([TOPIC_PROMPT, CALL_PROMPT, GOAL_PROMPT], MAX_NEW)
    tokenizer = load_tokenizer(MODEL)
    namespace = f"standby_{uuid.uuid4().hex[:8]}"
    ns = ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"model:={MODEL}"]
    front = ["-p", "modules:=[embedding, 'blocks:0:15']", "-p", "output_topic:=chain/hidden_15"]
    back = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15"]
    gateway = [*ns, "-p", "plan_topic:=''", "-p", "standby:=true"]
    client = RosClient("standby_client", namespace)
    arrivals: list[tuple[float, InferenceResult]] = []
    client.node.create_subscription(InferenceResult, "results", lambda m: arrivals.append((time.monotonic(), m)),
                                    CONTROL)
    logs = client.collect_logs()
    try:
        requests = client.node.create_publisher(InferenceRequest, "requests", CONTROL)
        # A standby alone: it holds what comes, takes over after its grace and serves once the chain is up.
        first = processes.start(LIB / "gateway", *gateway, "-r", "__node:=gateway_a")
        assert client.spin_until(lambda: requests.get_subscription_count() >= 1, 30)
        early = _request("early", TOPIC_PROMPT)
        requests.publish(early)  # no gateway serves yet, and no chain runs
        processes.start(LIB / "shard", *ns, "-r", "__node:=front", *front)
        processes.start(LIB / "shard", *ns, "-r", "__node:=back", *back)
        assert client.spin_until(lambda: _finals(arrivals, "early"), 120), "the lone standby did not serve"
        (answer,) = _finals(arrivals, "early")
        assert not answer.error_code, answer.error_message
        assert _tokens(arrivals, "early") == reference[TOPIC_PROMPT]

        # A second standby, watching the first (now active) one.
        processes.start(LIB / "gateway", *gateway, "-r", "__node:=gateway_b")
        assert client.spin_until(lambda: any("standby: the active gateway is alive" in line.msg and
                                             line.name.endswith("gateway_b") for line in logs), 90), \
            [line.msg for line in logs if line.name.endswith("gateway_b")]
        # The active one's action clients are undisturbed: the standby's action server answers nothing while standby.
        actions = ActionClient(client.node, GenerateAction, "generate")
        assert actions.wait_for_server(timeout_sec=30)
        sent = actions.send_goal_async(GenerateAction.Goal(request=_request("goal", GOAL_PROMPT)))
        assert client.spin_until(sent.done, 30) and sent.result().accepted
        outcome = sent.result().get_result_async()
        assert client.spin_until(outcome.done, 120), "the goal got no result"
        assert outcome.result().status == GoalStatus.STATUS_SUCCEEDED
        assert list(outcome.result().result.result.token_ids) == reference[GOAL_PROMPT]

        # A call both gateways get: the active one answers it, the standby answers its copy from the active one's
        # progress, and the client takes the first answer.
        service = client.node.create_client(Generate, "generate")
        assert service.wait_for_service(timeout_sec=30)
        both = service.call_async(Generate.Request(request=_request("both", CALL_PROMPT)))
        assert client.spin_until(both.done, 60), "the call got no answer"
        assert list(both.result().result.token_ids) == reference[CALL_PROMPT]

        # A topic request, a service call and an action goal (without a request_id: the standby knows it by its goal
        # id) in flight when the active gateway is killed.
        call = service.call_async(Generate.Request(request=_request("call", CALL_PROMPT)))
        feedback: list[InferenceResult] = []
        in_flight = actions.send_goal_async(GenerateAction.Goal(request=_request("", GOAL_PROMPT)),
                                            feedback_callback=lambda f: feedback.append(f.feedback.chunk))
        requests.publish(_request("streamed", TOPIC_PROMPT))
        assert client.spin_until(lambda: len(_chunks(arrivals, "streamed")) >= 5 and len(feedback) >= 2, 60), \
            "no tokens came"
        assert in_flight.result().accepted
        goal_outcome = in_flight.result().get_result_async()
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(timeout=10)
        assert client.spin_until(lambda: _finals(arrivals, "streamed") and call.done() and goal_outcome.done(), 120), \
            "the standby did not finish what was in flight"
        # Results come in order on one topic: once a request sent now is answered, a second final of the one in
        # flight would have come too.
        requests.publish(_request("after", CALL_PROMPT))
        assert client.spin_until(lambda: _finals(arrivals, "after"), 60), "the new active gateway does not serve"
    finally:
        client.close()

    # The chunk on its way when the active one died may come again from the standby, with its index and the same
    # tokens (a subscriber keys chunks on their index): only that one, and none is missing.
    streamed = _chunks(arrivals, "streamed")
    by_index = {c.chunk_index: c for c in streamed}
    repeated = [c for i, c in enumerate(streamed) if c.chunk_index in {p.chunk_index for p in streamed[:i]}]
    assert sorted(by_index) == list(range(len(by_index))), "a chunk missing"
    assert len(repeated) <= 1, f"chunks repeated: {[c.chunk_index for c in repeated]}"
    assert all(list(c.token_ids) == list(by_index[c.chunk_index].token_ids) for c in repeated), "a repeat differs"
    chunks = [by_index[i] for i in sorted(by_index)]
    assert [c.final for c in streamed].count(True) == 1 and chunks[-1].final
    assert not chunks[-1].error_code, chunks[-1].error_message
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == reference[TOPIC_PROMPT]
    assert "".join(c.text for c in chunks) == tokenizer.decode(tokens, skip_special_tokens=True)
    result = call.result().result
    assert not result.error_code, result.error_message
    assert list(result.token_ids) == reference[CALL_PROMPT]
    assert result.text == tokenizer.decode(list(result.token_ids), skip_special_tokens=True)
    assert goal_outcome.result().status == GoalStatus.STATUS_SUCCEEDED
    goal_result = goal_outcome.result().result.result
    assert list(goal_result.token_ids) == reference[GOAL_PROMPT], "the adopted goal's whole answer"
    by_index = {chunk.chunk_index: chunk for chunk in feedback}  # a resumed stream may repeat its last chunk
    assert sorted(by_index) == list(range(len(by_index))), "a feedback chunk missing"
    assert [t for i in sorted(by_index) for t in by_index[i].token_ids] == reference[GOAL_PROMPT]
    assert not [line.msg for line in logs if "Ignoring unexpected" in line.msg], "two action servers answered"
    after = [t for t, m in arrivals if t > killed_at and m.request_id == "streamed"]
    line = (f"standby gateway: kill -9 of the active one -> first chunk from the standby after "
            f"{after[0] - killed_at:.3f} s; the streamed request and the call in flight each answered once")
    print(line)
    REPORTED.append(line)


def _request(request_id: str, prompt: str) -> InferenceRequest:
    request = InferenceRequest(request_id=request_id, prompt=prompt)
    request.options.max_new_tokens = MAX_NEW
    return request


def _chunks(arrivals: list[tuple[float, InferenceResult]], request_id: str) -> list[InferenceResult]:
    return [m for _, m in arrivals if m.request_id == request_id]


def _finals(arrivals, request_id: str) -> list[InferenceResult]:
    return [m for m in _chunks(arrivals, request_id) if m.final]


def _tokens(arrivals, request_id: str) -> list[int]:
    return [t for m in _chunks(arrivals, request_id) for t in m.token_ids]
