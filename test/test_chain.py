"""SmolLM2 cut into three shard processes and a gateway process, driven over real DDS: the same greedy answers as
the whole model, streaming, sessions, and errors that leave the chain serving."""

from __future__ import annotations

import pathlib
import time
import uuid

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.action import Generate as GenerateAction
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult
from edge_lam_msgs.srv import Generate
from rclpy.action import ActionClient

from conftest import REPO, REPORTED, Processes, finish
from edge_lam.ros.qos import CONTROL, TENSORS
from edge_lam.wire.tensors import to_msg
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
PARAMS = REPO / "config" / "smollm2_chain.yaml"
PROMPTS = ["What is a robot?", "Name three colors.", "Write one sentence about the sea."]
MAX_NEW = 20


class Client(RosClient):
    """A node in the test process that talks to the gateway and to the chain's topics."""

    def __init__(self, namespace: str) -> None:
        super().__init__("chain_test_client", namespace)
        self.generate_client = self.node.create_client(Generate, "generate")
        self.action_client = ActionClient(self.node, GenerateAction, "generate")
        self.results: list[InferenceResult] = []
        self.chain_input: list[ChainPacket] = []
        self.chain_output: list[ChainPacket] = []
        self.node.create_subscription(InferenceResult, "results", self.results.append, CONTROL)
        self.node.create_subscription(ChainPacket, "chain/input", self.chain_input.append, TENSORS)
        self.node.create_subscription(ChainPacket, "chain/output", self.chain_output.append, TENSORS)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)
        self.publishers = {}

    def generate(self, prompt: str = "", max_new_tokens: int = MAX_NEW, **fields) -> InferenceResult:
        call = Generate.Request()
        call.request.prompt = prompt
        call.request.options.max_new_tokens = max_new_tokens
        for name, value in fields.items():
            setattr(call.request, name, value)
        future = self.generate_client.call_async(call)
        assert self.spin_until(future.done, 120), "the gateway did not answer"
        return future.result().result

    def send_goal(self, request: InferenceRequest, feedback: list[InferenceResult]):
        """Send a goal of the generate action; its feedback chunks are appended to ``feedback`` as they come."""
        assert self.action_client.wait_for_server(timeout_sec=30), "no generate action"
        future = self.action_client.send_goal_async(GenerateAction.Goal(request=request),
                                                    feedback_callback=lambda m: feedback.append(m.feedback.chunk))
        assert self.spin_until(future.done, 30), "the gateway did not answer the goal"
        handle = future.result()
        assert handle.accepted
        return handle

    def goal_result(self, handle) -> tuple[int, InferenceResult]:
        """The goal's status and its result (the whole answer)."""
        future = handle.get_result_async()
        assert self.spin_until(future.done, 120), "the goal got no result"
        return future.result().status, future.result().result.result

    def publish_packet(self, topic: str, packet: ChainPacket) -> None:
        if topic not in self.publishers:
            self.publishers[topic] = self.node.create_publisher(ChainPacket, topic, TENSORS)
            assert self.spin_until(lambda: self.publishers[topic].get_subscription_count() > 0, 30)
        self.publishers[topic].publish(packet)


def start_chain(processes: Processes, namespace: str, wire_dtype: str) -> None:
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", PARAMS, "-p", f"wire_dtype:={wire_dtype}"]
    processes.start(LIB / "compose", "shard:embed_shard", "shard:blocks_shard", *args)  # two components, one process
    processes.start(LIB / "shard", *args, "-r", "__node:=middle_shard")
    processes.start(LIB / "shard", *args, "-r", "__node:=head_shard")
    processes.start(LIB / "gateway", *args)


def wait_until_serving(client: Client) -> None:
    assert client.generate_client.wait_for_service(timeout_sec=60), "no gateway"
    deadline = time.monotonic() + 90
    while True:  # the shards load the model after the gateway is up; it refuses until they are connected
        result = client.generate("Hi", max_new_tokens=1)
        if result.error_code != InferenceResult.ERROR_MODULE_UNAVAILABLE:
            assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
            return
        assert time.monotonic() < deadline, result.error_message
        time.sleep(0.5)


@pytest.fixture(scope="module", params=["float32", "float16"])
def chain(request):
    wire_dtype = request.param
    namespace = f"chain_{wire_dtype}_{uuid.uuid4().hex[:6]}"
    processes = Processes()
    client = Client(namespace)
    try:
        start_chain(processes, namespace, wire_dtype)
        wait_until_serving(client)
        yield wire_dtype, client
    finally:
        client.close()
        processes.stop_all()


def test_the_gateway_serves_only_once_every_hop_is_connected(processes):
    namespace = f"partial_{uuid.uuid4().hex[:6]}"
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", PARAMS]
    processes.start(LIB / "compose", "shard:embed_shard", "shard:blocks_shard", *args)
    processes.start(LIB / "shard", *args, "-r", "__node:=head_shard")
    processes.start(LIB / "gateway", *args)
    client = Client(namespace)
    try:
        assert client.generate_client.wait_for_service(timeout_sec=60)
        # Both ends of the chain are up, the middle shard is not: every request is refused at once, none hangs,
        # while the gateway's probes go into the chain and none comes back.
        for _ in range(3):
            started = time.monotonic()
            result = client.generate("Hi", max_new_tokens=1)
            assert result.error_code == InferenceResult.ERROR_MODULE_UNAVAILABLE, result.error_message
            assert time.monotonic() - started < 10
            sent = len(probes(client.chain_input))
            assert client.spin_until(lambda n=sent: len(probes(client.chain_input)) > n, 10), "no probe went out"
        assert not probes(client.chain_output)
        processes.start(LIB / "shard", *args, "-r", "__node:=middle_shard")
        wait_until_serving(client)
        assert client.spin_until(lambda: probes(client.chain_output), 10)  # what it waited for
    finally:
        client.close()


def probes(packets: list[ChainPacket]) -> list[ChainPacket]:
    """The gateway's probes among ``packets``: releases of throwaway chain sessions."""
    return [p for p in packets if p.release and p.session_id.startswith("probe-")]


@pytest.fixture(scope="module")
def reference():
    """Greedy answers of the whole model in this process, as the gateway would build the prompt."""
    return greedy_tokens(PROMPTS, MAX_NEW)


def test_split_chain_gives_the_whole_models_greedy_tokens(chain, reference):
    wire_dtype, client = chain
    agree = total = 0
    for prompt in PROMPTS:
        result = client.generate(prompt)
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert result.final and result.finish_reason in ("stop", "length")
        tokens, expected = list(result.token_ids), reference[prompt]
        if wire_dtype == "float32":
            assert tokens == expected, f"{prompt!r}: {tokens} != {expected}"
        agree += next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b),
                      min(len(tokens), len(expected)))
        total += len(expected)
        assert result.text and result.time_to_first_token_s > 0
        stages = {t.stage for t in result.timings}
        assert {"module:embedding", "module:blocks_0_10", "module:blocks_10_20", "module:blocks_20_30",
                "module:head", "total"} <= stages
    REPORTED.append(f"greedy tokens equal to the whole model's before the first difference, hidden states as "
                    f"{wire_dtype}: {agree}/{total}")


def test_results_stream_chunk_by_chunk_on_the_topic(chain, reference):
    _, client = chain
    assert client.spin_until(lambda: client.requests.get_subscription_count() > 0, 30)
    request = InferenceRequest(request_id=f"stream-{uuid.uuid4().hex[:6]}", prompt=PROMPTS[0])
    request.options.max_new_tokens = MAX_NEW
    client.results.clear()
    client.requests.publish(request)
    assert client.spin_until(lambda: any(r.final for r in client.results), 120)
    chunks = [r for r in client.results if r.request_id == request.request_id]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.final for c in chunks].count(True) == 1 and chunks[-1].final
    assert all(len(c.token_ids) == 1 for c in chunks[:-1])
    whole = client.generate(PROMPTS[0])
    assert [t for c in chunks for t in c.token_ids] == list(whole.token_ids)
    assert "".join(c.text for c in chunks) == whole.text


def test_a_kept_session_continues_and_a_lost_cache_is_rebuilt_by_replay(chain):
    _, client = chain
    first = client.generate("My robot is called Rolf. Say hello to it.", keep_session=True)
    assert first.error_code == InferenceResult.ERROR_NONE and first.session_id
    reference = client.generate("What is my robot called?", session_id=first.session_id, keep_session=True)
    assert reference.error_code == InferenceResult.ERROR_NONE, reference.error_message

    # The same conversation again, but the last two shards lose the session's caches before the second turn:
    # a release sent into the middle of the chain drops it there and downstream only (seen once it leaves the head).
    again = client.generate("My robot is called Rolf. Say hello to it.", keep_session=True)
    client.chain_output.clear()
    client.publish_packet("chain/hidden_10", ChainPacket(session_id=again.session_id, release=True))
    assert client.spin_until(lambda: any(p.release and p.session_id == again.session_id
                                         for p in client.chain_output), 30), "the release did not pass the chain"
    request_id = f"replayed-{uuid.uuid4().hex[:6]}"
    replayed = client.generate("What is my robot called?", session_id=again.session_id, request_id=request_id)
    assert replayed.error_code == InferenceResult.ERROR_NONE, replayed.error_message
    assert list(replayed.token_ids) == list(reference.token_ids)
    assert replayed.session_id == ""  # not kept: the session ended with this request

    # The replay, as the chain saw it: the middle shard reported the lost session, and the gateway sent the whole
    # conversation again from position 0 on a fresh chain session.
    def seen(packet_of) -> bool:
        return client.spin_until(lambda: any(packet_of(p) for p in client.chain_output), 30)
    assert seen(lambda p: p.request_id == request_id and p.session_id == again.session_id
                and p.error_code == ChainPacket.ERROR_SESSION_LOST and "middle_shard" in p.error_message)
    assert seen(lambda p: p.request_id == request_id and p.session_id == f"{again.session_id}~1"
                and p.position == 0 and p.reset and p.error_code == ChainPacket.ERROR_NONE)

    unknown = client.generate("Hello", session_id=again.session_id)
    assert unknown.error_code == InferenceResult.ERROR_UNKNOWN_SESSION


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"prompt": ""}, InferenceResult.ERROR_BAD_REQUEST, "empty request"),
        ({"prompt": "Hi", "max_new_tokens": 10**6}, InferenceResult.ERROR_BAD_REQUEST, "max_new_tokens"),
        ({"prompt": "", "input_token_ids": [1, 49152]}, InferenceResult.ERROR_BAD_REQUEST, "vocabulary"),
        ({"prompt": "Hi", "session_id": "no-such-session"}, InferenceResult.ERROR_UNKNOWN_SESSION, "no session"),
        ({"prompt": "Hi", "model_id": "gpt-17"}, InferenceResult.ERROR_BAD_REQUEST, "serves"),
        ({"prompt": "x " * 2100}, InferenceResult.ERROR_BAD_REQUEST, "exceed the context"),
    ],
)
def test_bad_requests_get_an_error_result(chain, fields, code, message):
    _, client = chain
    result = client.generate(**fields)
    assert result.final and result.error_code == code and message in result.error_message
    assert result.finish_reason == "error"


def goal_request(prompt: str, max_new_tokens: int = MAX_NEW) -> InferenceRequest:
    request = InferenceRequest(request_id=f"goal-{uuid.uuid4().hex[:6]}", prompt=prompt)
    request.options.max_new_tokens = max_new_tokens
    return request


def test_the_generate_action_streams_each_chunk_as_feedback(chain):
    _, client = chain
    feedback: list[InferenceResult] = []
    status, result = client.goal_result(client.send_goal(goal_request(PROMPTS[2]), feedback))
    assert status == GoalStatus.STATUS_SUCCEEDED
    assert result.final and result.error_code == InferenceResult.ERROR_NONE and result.finish_reason in ("stop",
                                                                                                          "length")
    # rclpy's ActionClient stops passing feedback on once it has the result, so the chunks that came with or after
    # it (the final one, often the last token's) may be missing: those that came are the answer's beginning, in order.
    tokens = [t for c in feedback for t in c.token_ids]
    assert len(tokens) >= len(result.token_ids) // 2, f"only {len(tokens)} tokens streamed before the result"
    assert [c.chunk_index for c in feedback] == list(range(len(feedback)))
    assert all(len(c.token_ids) == 1 and not c.final for c in feedback if c.token_ids)
    assert tokens == list(result.token_ids)[:len(tokens)]
    assert result.text.startswith("".join(c.text for c in feedback))
    assert list(client.generate(PROMPTS[2]).token_ids) == list(result.token_ids)  # as the service answers


def test_cancelling_the_generate_action_stops_it_at_once_and_releases_its_session(chain, reference):
    _, client = chain
    feedback: list[InferenceResult] = []
    request = goal_request("Write a long story about a robot that learns to paint.", max_new_tokens=400)
    client.chain_output.clear()
    handle = client.send_goal(request, feedback)
    assert client.spin_until(lambda: len(feedback) >= 3, 60), "no tokens came"
    cancelling = handle.cancel_goal_async()
    assert client.spin_until(cancelling.done, 30)
    assert [bytes(g.goal_id.uuid) for g in cancelling.result().goals_canceling] == [bytes(handle.goal_id.uuid)]
    status, result = client.goal_result(handle)
    assert status == GoalStatus.STATUS_CANCELED
    assert result.final and result.finish_reason == "cancelled" and result.error_code == InferenceResult.ERROR_NONE
    generated = len(result.token_ids)
    assert 3 <= generated < 400

    # The shards got the release of its session, after the step that was in flight: the gateway had sent step
    # `generated` and its token came back, too late to be given.
    session = feedback[0].session_id
    assert client.spin_until(lambda: any(p.release and p.session_id == session for p in client.chain_output), 30)
    late = [p for p in client.chain_output if p.request_id == request.request_id and not p.release]
    assert late[-1].step == generated and not late[-1].error_code

    # The gateway serves the next request as usual; by its answer it has long seen that late packet, and nothing
    # more came for the cancelled goal: its chunks are the result's beginning, and a final one (which rclpy's client
    # may not pass on once it has the result) is the last and says cancelled.
    answer = client.generate(PROMPTS[1])
    assert answer.error_code == InferenceResult.ERROR_NONE
    assert list(answer.token_ids)[:3] == reference[PROMPTS[1]][:3]
    assert [c.chunk_index for c in feedback] == list(range(len(feedback)))
    assert [c for c in feedback if c.final] in ([], feedback[-1:])
    assert all(c.finish_reason == "cancelled" for c in feedback if c.final)
    tokens = [t for c in feedback for t in c.token_ids]
    assert tokens == list(result.token_ids)[:len(tokens)]
    assert not [r for r in client.results if r.request_id == request.request_id]  # a goal's answer goes to the goal


def test_a_bad_goal_gets_an_error_result(chain):
    _, client = chain
    feedback: list[InferenceResult] = []
    status, result = client.goal_result(client.send_goal(goal_request("", max_new_tokens=10**6), feedback))
    assert status == GoalStatus.STATUS_ABORTED
    assert result.final and result.error_code == InferenceResult.ERROR_BAD_REQUEST
    assert result.finish_reason == "error" and "empty request" in result.error_message


def malformed(kind: str) -> ChainPacket:
    tensor = to_msg(np.zeros((1, 2, 576), np.float16), "hidden_states")
    if kind == "shape":
        tensor = to_msg(np.zeros((1, 2, 100), np.float16), "hidden_states")
    elif kind == "dtype":
        tensor.dtype = "complex64"
    elif kind == "bytes":
        tensor.data = bytes(len(tensor.data) - 3)
    return ChainPacket(request_id=f"bad-{kind}", session_id=f"bad-{kind}", tensors=[tensor])


@pytest.mark.parametrize("kind", ["shape", "dtype", "bytes"])
def test_a_malformed_tensor_gets_an_error_and_the_chain_keeps_serving(chain, reference, kind):
    _, client = chain
    client.chain_output.clear()
    client.publish_packet("chain/hidden_10", malformed(kind))
    assert client.spin_until(lambda: any(p.request_id == f"bad-{kind}" for p in client.chain_output), 30)
    error = next(p for p in client.chain_output if p.request_id == f"bad-{kind}")
    assert error.error_code == ChainPacket.ERROR_BAD_INPUT and "middle_shard" in error.error_message
    result = client.generate(PROMPTS[1])
    assert result.error_code == InferenceResult.ERROR_NONE
    assert list(result.token_ids)[:3] == reference[PROMPTS[1]][:3]


@pytest.mark.parametrize(("parameter", "message"), [
    ("wire_dtype:=float8", "wire_dtype 'float8' is not one of"),
    ("session_idle_timeout_s:=0.0", "session_idle_timeout_s must be > 0"),
    ("compute_slowdown:=0.5", "compute_slowdown must be >= 1"),
    ("input_link:=[0.02]", "an emulated link is [latency_s, bandwidth_bps]"),
    ("output_link:=[0.02,0.0]", "emulated link [0.02, 0.0]: link ?->? needs a finite latency >= 0 and a bandwidth > 0"),
])
def test_a_shard_with_a_bad_parameter_stops_with_a_clear_error(processes, parameter, message):
    shard = processes.start(LIB / "shard", "--ros-args", "-p", parameter)
    rc, output = finish(shard, timeout_s=60)
    assert rc not in (0, -9) and message in output
