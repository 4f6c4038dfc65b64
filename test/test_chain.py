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
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.action import Generate as GenerateAction
from edge_lam_msgs.msg import ChainPacket, GenerationOptions, InferenceRequest, InferenceResult
from edge_lam_msgs.srv import Generate
from rclpy.action import ActionClient
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient

from conftest import REPO, REPORTED, Processes, finish
from edge_lam.chain.shard_node import TRIM_PERIOD_S
from edge_lam.ros.qos import CONTROL, TENSORS
from edge_lam.wire.tensors import to_msg
from model_reference import TrainedAdapter, greedy_tokens, prompt_ids
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
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.parameter_clients: dict[str, AsyncParameterClient] = {}

    def set_parameter(self, node: str, name: str, value) -> tuple[bool, str]:
        """``ros2 param set`` on ``node`` of the chain: whether it was accepted, and the reason when not."""
        if node not in self.parameter_clients:
            self.parameter_clients[node] = AsyncParameterClient(self.node, node)
        client = self.parameter_clients[node]
        assert client.wait_for_services(timeout_sec=30), f"no parameter services on {node}"
        future = client.set_parameters([Parameter(name, value=value)])
        assert self.spin_until(future.done, 30), f"{node} did not answer the parameter set"
        (result,) = future.result().results
        return result.successful, result.reason

    def bound(self, node: str, key: str) -> tuple[int, int] | None:
        """The latest ``used / limit`` ``node`` of the chain shows for bound ``key`` on /diagnostics."""
        name = f"{self.node.get_namespace()}/{node}: bounds"
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name == name:
                    value = next(v.value for v in status.values if v.key == key)
                    used, limit = value.split(" / ")
                    return int(used), int(limit)
        return None

    def wait_for_bound(self, node: str, key: str, check, timeout_s: float = 15.0) -> tuple[int, int]:
        self.diagnostics.clear()
        assert self.spin_until(lambda: (b := self.bound(node, key)) is not None and check(*b), timeout_s), \
            f"{node} {key}: {self.bound(node, key)}"
        return self.bound(node, key)

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


def start_chain(processes: Processes, namespace: str, wire_dtype: str, adapter: pathlib.Path) -> dict[str, int]:
    """Start the chain, every shard serving ``adapter`` as "fleet"; the process id of each of its nodes."""
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", PARAMS, "-p", f"wire_dtype:={wire_dtype}"]
    shard_args = [*args, "-p", f"adapters:=[fleet={adapter}]"]
    front = processes.start(LIB / "compose", "shard:embed_shard", "shard:blocks_shard", *shard_args)  # one process
    middle = processes.start(LIB / "shard", *shard_args, "-r", "__node:=middle_shard")
    head = processes.start(LIB / "shard", *shard_args, "-r", "__node:=head_shard")
    gateway = processes.start(LIB / "gateway", *args)
    return {"embed_shard": front.pid, "blocks_shard": front.pid, "middle_shard": middle.pid, "head_shard": head.pid,
            "gateway": gateway.pid}


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


@pytest.fixture(scope="module")
def fleet_adapter(tmp_path_factory) -> TrainedAdapter:
    """An adapter as the collaborative fine-tuning writes it, and the training code's model with it."""
    return TrainedAdapter(tmp_path_factory.mktemp("adapter") / "fleet.safetensors")


@pytest.fixture(scope="module", params=["float32", "float16"])
def chain(request, fleet_adapter):
    wire_dtype = request.param
    namespace = f"chain_{wire_dtype}_{uuid.uuid4().hex[:6]}"
    processes = Processes()
    client = Client(namespace)
    try:
        client.pids = start_chain(processes, namespace, wire_dtype, fleet_adapter.path)
        request.getfixturevalue("reference")  # while the chain starts (once: the fixture is the module's)
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
    if kind == "nan":
        tensor = to_msg(np.full((1, 2, 576), np.nan, np.float16), "hidden_states")
    elif kind == "shape":
        tensor = to_msg(np.zeros((1, 2, 100), np.float16), "hidden_states")
    elif kind == "dtype":
        tensor.dtype = "complex64"
    elif kind == "bytes":
        tensor.data = bytes(len(tensor.data) - 3)
    return ChainPacket(request_id=f"bad-{kind}", session_id=f"bad-{kind}", tensors=[tensor])


@pytest.mark.parametrize("kind", ["shape", "dtype", "bytes", "nan"])
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
    ("session_idle_timeout_s:=0.0", "'session_idle_timeout_s': must be > 0"),
    ("compute_slowdown:=0.5", "compute_slowdown must be >= 1"),
    ("input_link:=[0.02]", "an emulated link is [latency_s, bandwidth_bps]"),
    ("output_link:=[0.02,0.0]", "emulated link [0.02, 0.0]: link ?->? needs a finite latency >= 0 and a bandwidth > 0"),
    ("adapters:=[fleet=/no/such/adapter.safetensors]", "/no/such/adapter.safetensors: not a readable adapter file"),
])
def test_a_shard_with_a_bad_parameter_stops_with_a_clear_error(processes, parameter, message):
    shard = processes.start(LIB / "shard", "--ros-args", "-p", parameter)
    rc, output = finish(shard, timeout_s=60)
    assert rc not in (0, -9) and message in output


# -- bounds, bad input and live parameters (on one chain: the float32 one) ----------------------------------------

def only_once(wire_dtype: str) -> None:
    if wire_dtype != "float32":
        pytest.skip("checked on the float32 chain: the wire dtype changes nothing here")


def test_a_request_gets_the_adapter_it_names_or_none_and_an_adapter_not_held_is_an_error(chain, reference,
                                                                                        fleet_adapter):
    wire_dtype, client = chain
    only_once(wire_dtype)
    changed = 0
    for prompt in PROMPTS[:2]:
        tuned = client.generate(prompt, options=GenerationOptions(max_new_tokens=MAX_NEW, adapter="fleet"))
        assert tuned.error_code == InferenceResult.ERROR_NONE, tuned.error_message
        answer = list(tuned.token_ids)
        assert fleet_adapter.answers_as(prompt_ids(prompt)[0].tolist(), answer), prompt  # the training's model
        changed += answer != reference[prompt]
    assert changed >= 1
    unknown = client.generate(PROMPTS[0], options=GenerationOptions(max_new_tokens=MAX_NEW, adapter="kitchen"))
    assert unknown.error_code == InferenceResult.ERROR_BAD_REQUEST and unknown.finish_reason == "error"
    assert "adapter 'kitchen' is not held here (held: ['fleet']" in unknown.error_message
    plain = client.generate(PROMPTS[1])  # none, after both: the base model's answer (every shard holds "fleet")
    assert list(plain.token_ids) == reference[PROMPTS[1]]


def test_forged_next_tokens_while_a_step_is_awaited_are_dropped_and_the_answer_comes(chain):
    wire_dtype, client = chain
    only_once(wire_dtype)
    session = client.generate("Hi", max_new_tokens=1, keep_session=True).session_id
    request_id = f"forged-{uuid.uuid4().hex[:6]}"
    call = Generate.Request()
    call.request.request_id, call.request.session_id = request_id, session
    call.request.prompt = "Describe the sea in one sentence. " * 40  # a long prefill: the step stays awaited
    call.request.options.max_new_tokens = 3
    client.publish_packet("chain/output", ChainPacket(session_id="nobody", release=True))  # ignored
    assert client.spin_until(lambda: client.publishers["chain/output"].get_subscription_count() >= 2, 30)  # gateway
    client.chain_input.clear()
    future = client.generate_client.call_async(call)
    assert client.spin_until(lambda: any(p.request_id == request_id for p in client.chain_input), 30)
    step = next(p for p in client.chain_input if p.request_id == request_id)
    bfloat16 = to_msg(np.asarray([5], np.int16), "next_token")
    bfloat16.dtype = "bfloat16"
    short = to_msg(np.asarray([5], np.int64), "next_token")
    short.data = bytes(3)
    for tensor in (bfloat16, to_msg(np.zeros((0,), np.int64), "next_token"), short,
                   to_msg(np.asarray([np.nan]), "next_token"), to_msg(np.asarray([2**62], np.int64), "next_token"),
                   to_msg(np.asarray([-5], np.int64), "next_token")):
        client.publish_packet("chain/output", ChainPacket(request_id=request_id, session_id=step.session_id,
                                                          step=step.step, tensors=[tensor]))
    assert client.spin_until(future.done, 120), "the gateway did not answer"
    result = future.result().result
    assert result.error_code == InferenceResult.ERROR_NONE and len(result.token_ids) >= 1, result.error_message
    assert client.generate(PROMPTS[1]).error_code == InferenceResult.ERROR_NONE


def test_a_packet_longer_than_a_shards_context_is_refused_at_once_with_an_error_packet(chain):
    wire_dtype, client = chain
    only_once(wire_dtype)
    client.chain_output.clear()
    ids = to_msg(np.ones((1, 4096), np.int64), "input_ids")
    client.publish_packet("chain/input", ChainPacket(request_id="too-long", session_id="too-long", tensors=[ids]))
    assert client.spin_until(lambda: any(p.request_id == "too-long" for p in client.chain_output), 30)
    error = next(p for p in client.chain_output if p.request_id == "too-long")
    assert error.error_code == ChainPacket.ERROR_BAD_INPUT and "4096 tokens" in error.error_message
    assert "embed_shard" in error.error_message  # the first shard refused it: nothing was computed downstream
    assert client.generate(PROMPTS[1]).error_code == InferenceResult.ERROR_NONE


def test_beyond_max_queued_requests_the_gateway_answers_busy_at_once_and_read_only_parameters_refuse(chain):
    wire_dtype, client = chain
    only_once(wire_dtype)
    assert client.wait_for_bound("gateway", "requests_running", lambda used, limit: limit == 32)
    assert client.set_parameter("gateway", "max_queued_requests", 1) == (True, "")
    feedback: list[InferenceResult] = []
    handle = client.send_goal(goal_request("Write a long story about a robot.", max_new_tokens=400), feedback)
    try:
        assert client.spin_until(lambda: len(feedback) >= 2, 60), "no tokens came"
        assert client.wait_for_bound("gateway", "requests_running", lambda used, limit: (used, limit) == (1, 1))
        busy = client.generate("Hi")
        assert busy.final and busy.error_code == InferenceResult.ERROR_BUSY and "busy" in busy.error_message
        status, refused = client.goal_result(client.send_goal(goal_request("Hi"), []))  # the action: the same
        assert status == GoalStatus.STATUS_ABORTED and refused.error_code == InferenceResult.ERROR_BUSY
        request = InferenceRequest(request_id=f"busy-{uuid.uuid4().hex[:6]}", prompt="Hi")  # and the topic
        client.requests.publish(request)
        assert client.spin_until(lambda: any(r.request_id == request.request_id for r in client.results), 30)
        (answer,) = [r for r in client.results if r.request_id == request.request_id]
        assert answer.final and answer.error_code == InferenceResult.ERROR_BUSY
    finally:
        cancelling = handle.cancel_goal_async()
        assert client.spin_until(cancelling.done, 30)
        client.goal_result(handle)
        assert client.set_parameter("gateway", "max_queued_requests", 32) == (True, "")
    assert client.generate("Hi", max_new_tokens=1).error_code == InferenceResult.ERROR_NONE
    accepted, reason = client.set_parameter("gateway", "max_queued_requests", 0)
    assert not accepted and "range" in reason
    accepted, reason = client.set_parameter("gateway", "model", "gpt-17")
    assert not accepted and "read-only" in reason.lower()
    accepted, _ = client.set_parameter("middle_shard", "modules", ["blocks:0:30"])
    assert not accepted


def test_sessions_beyond_max_sessions_are_dropped_replayed_when_asked_and_their_kv_bytes_given_back(chain):
    wire_dtype, client = chain
    only_once(wire_dtype)
    assert client.set_parameter("middle_shard", "max_sessions", 2) == (True, "")  # older tests' sessions go
    rss = [rss_mb(client.pids["middle_shard"])]
    try:
        first, second = (client.generate(p, max_new_tokens=4, keep_session=True).session_id for p in PROMPTS[:2])
        sessions, _ = client.wait_for_bound("middle_shard", "sessions", lambda used, limit: limit == 2)
        held, _ = client.bound("middle_shard", "kv_bytes")
        assert sessions == 2 and held > 0
        third = client.generate(PROMPTS[2], max_new_tokens=4, keep_session=True).session_id
        assert client.wait_for_bound("middle_shard", "sessions", lambda used, limit: used == 2)
        rss.append(rss_mb(client.pids["middle_shard"]))

        # The least recently used (the first) was dropped: asked again, the middle shard says so and the gateway
        # replays the conversation.
        client.chain_output.clear()
        again = client.generate("And again?", max_new_tokens=4, session_id=first, keep_session=True)
        assert again.error_code == InferenceResult.ERROR_NONE, again.error_message
        assert any(p.session_id == first and p.error_code == ChainPacket.ERROR_SESSION_LOST
                   and "middle_shard" in p.error_message for p in client.chain_output)

        # Ended sessions give their KV bytes back: the shard's own count returns to zero.
        for session in (first, third):
            assert client.generate("Bye", max_new_tokens=1, session_id=session).error_code == InferenceResult.ERROR_NONE
        assert client.wait_for_bound("middle_shard", "kv_bytes", lambda used, limit: used == 0)
        assert client.bound("middle_shard", "sessions")[0] == 0
        client.spin_for(TRIM_PERIOD_S + 1.0)  # the shard gives released memory back to the system
        rss.append(rss_mb(client.pids["middle_shard"]))
        REPORTED.append(f"middle shard RSS: {rss[0]} MB, {rss[1]} MB holding 2 sessions ({held} KV bytes), "
                        f"{rss[2]} MB once they were released")
        assert second  # dropped by the shard while the gateway keeps it: its next request would replay it
    finally:
        assert client.set_parameter("middle_shard", "max_sessions", 64) == (True, "")


def rss_mb(pid: int) -> int:
    """A process's resident memory (reported, never asserted on: the allocator decides it)."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def test_a_burst_beyond_max_queued_requests_is_served_up_to_the_bound_and_the_rest_refused_busy(chain):
    wire_dtype, client = chain
    only_once(wire_dtype)
    assert client.spin_until(lambda: client.requests.get_subscription_count() > 0, 30)
    burst = [InferenceRequest(request_id=f"burst-{i}-{uuid.uuid4().hex[:6]}", prompt=f"Say {i}.") for i in range(100)]
    for request in burst:
        request.options.max_new_tokens = 2
    ids = {r.request_id for r in burst}
    started = time.monotonic()
    for request in burst:
        client.requests.publish(request)

    def finals() -> dict[str, InferenceResult]:
        return {r.request_id: r for r in client.results if r.final and r.request_id in ids}
    assert client.spin_until(lambda: len(finals()) >= 100 - 32, 60)  # those beyond the bound: answered at once
    refused_after = time.monotonic() - started
    assert client.spin_until(lambda: len(finals()) == 100, 180), f"{len(finals())} of 100 answered"
    answered = time.monotonic() - started
    codes = [r.error_code for r in finals().values()]
    served, busy = codes.count(InferenceResult.ERROR_NONE), codes.count(InferenceResult.ERROR_BUSY)
    assert served >= 32 and busy >= 1 and served + busy == 100, codes
    REPORTED.append(f"burst of 100 requests (max_queued_requests 32): {served} served, {busy} refused as busy "
                    f"(those within {refused_after:.1f} s), all answered in {answered:.1f} s")


SHARDS = ("embed_shard", "blocks_shard", "middle_shard", "head_shard")


def shown(client: Client, node: str, key: str) -> list[int]:
    """Every value of ``key`` that ``node`` of the chain showed on /diagnostics since they were last cleared."""
    name = f"{client.node.get_namespace()}/{node}: bounds"
    return [int(v.value) for array in client.diagnostics for status in array.status if status.name == name
            for v in status.values if v.key == key]


def test_concurrent_goals_run_in_batches_at_the_shards_and_get_the_answers_they_get_alone(chain, reference):
    wire_dtype, client = chain
    only_once(wire_dtype)
    assert client.action_client.wait_for_server(timeout_sec=30)
    client.diagnostics.clear()
    assert client.spin_until(lambda: all(shown(client, node, "batched_steps") for node in SHARDS), 15)
    before = {node: shown(client, node, "batched_steps")[-1] for node in SHARDS}
    client.diagnostics.clear()  # what the shards show from now on is about these goals
    prompts = PROMPTS * 2  # six sessions, their caches of three lengths
    sent = [client.action_client.send_goal_async(GenerateAction.Goal(request=goal_request(p, max_new_tokens=10)))
            for p in prompts]
    assert client.spin_until(lambda: all(f.done() for f in sent), 30), "the gateway did not answer the goals"
    results = [f.result().get_result_async() for f in sent]
    assert client.spin_until(lambda: all(f.done() for f in results), 120), "the goals got no result"
    for prompt, future in zip(prompts, results, strict=True):
        result = future.result().result.result
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert list(result.token_ids) == reference[prompt][:10], prompt  # as the whole model answers it alone

    # The shards ran several sessions' steps as one batch: what /diagnostics shows a user.
    def batched() -> dict[str, int]:
        return {node: max(shown(client, node, "batched_steps"), default=before[node]) - before[node] for node in SHARDS}
    assert client.spin_until(lambda: sum(batched().values()) > 0, 15), batched()
    largest = {node: max(shown(client, node, "batch_sessions_largest"), default=0) for node in SHARDS}
    assert max(largest.values()) > 1, largest
    REPORTED.append(f"6 concurrent goals, answers equal to the whole model's: steps run in batches {batched()}, "
                    f"largest batch per shard {largest}")
    accepted, reason = client.set_parameter("middle_shard", "max_batch_sessions", 0)
    assert not accepted and "range" in reason
