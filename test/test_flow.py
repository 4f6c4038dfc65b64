"""Inference that flows between robot and edge, through ROS: SmolLM2 cut into a robot shard (embedding, blocks
0-15 and, where there is one, the early exit after them) and an edge shard (blocks 15-30 and the head), and a
gateway beside the robot's shard. Speculative decoding answers exactly the whole model's greedy tokens, also when the
drafts are wrong at once; cascade and device answers come from the robot's exit; with the edge's shard taken away
mid-request, the robot's exit finishes the answer and the result says degraded."""

from __future__ import annotations

import pathlib
import time
import uuid

import pytest
import torch
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceRequest, InferenceResult
from edge_lam_msgs.srv import Generate
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient

from conftest import REPORTED, Processes
from edge_lam.chain.requests import Route
from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.model.sampling import Sampling
from edge_lam.ros.qos import CONTROL
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 24
# The first answer copies its prompt (prompt lookup drafts it well); the second does not (this model does not repeat
# the list: what drafts it gets are wrong); the third is a question. Drafts wrong at once, every time: the exit's
# (test_speculative_with_the_exit_drafting_...), and test_flow_core's shards with wrong drafts.
PROMPTS = ['Write the sentence "The robot is moving forward slowly and turning left near the charging station" again.',
           "Repeat this list exactly: red, green, blue, red, green, blue, red, green, blue.", "What is a robot?"]
FRONT = ["embedding", "blocks:0:15", "exit:15"]  # the robot's part of the model, and its early exit
BACK = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15"]


class Client(RosClient):
    def __init__(self, namespace: str) -> None:
        super().__init__("flow_test_client", namespace)
        self.generate_client = self.node.create_client(Generate, "generate")

    def generate(self, prompt: str, max_new_tokens: int = MAX_NEW, **options) -> InferenceResult:
        call = Generate.Request()
        call.request.prompt = prompt
        call.request.options.max_new_tokens = max_new_tokens
        for name, value in options.items():
            setattr(call.request.options, name, value)
        future = self.generate_client.call_async(call)
        assert self.spin_until(future.done, 180), "the gateway did not answer"
        return future.result().result

    def wait_until_serving(self) -> None:
        assert self.generate_client.wait_for_service(timeout_sec=60), "no gateway"
        deadline = time.monotonic() + 120
        # Until the chain answers, the robot's exit may (a degraded answer): wait for one the chain gave.
        while (result := self.generate("Hi", 1)).error_code == InferenceResult.ERROR_MODULE_UNAVAILABLE \
                or result.degraded:
            assert time.monotonic() < deadline, result.error_message or "only degraded answers"
            time.sleep(0.5)
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message


def start_split(processes: Processes, namespace: str, front: list[str], *gateway: str) -> dict[str, object]:
    ns = ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"model:={MODEL}"]
    modules = "[" + ", ".join(f"'{m}'" for m in front) + "]"
    started = {"front": processes.start(LIB / "shard", *ns, "-r", "__node:=robot_shard", "-p", f"modules:={modules}",
                                        "-p", "output_topic:=chain/hidden_15"),
               "back": processes.start(LIB / "shard", *ns, "-r", "__node:=edge_shard", *BACK),
               "gateway": processes.start(LIB / "gateway", *ns, "-p", "plan_topic:=''", *gateway)}
    return started


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    return greedy_tokens(PROMPTS, MAX_NEW)


@pytest.fixture(scope="module")
def exit_reference() -> dict[str, list[int]]:
    """What the robot's exit alone answers (greedy), computed in this process with the shard's own core."""
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    core = ShardCore(model, [ModuleSpec.parse(m) for m in FRONT])
    answers, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as the shard computes (num_threads 1): the same sums in the same order
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        tokens, position, step_ids = [], 0, list(ids)
        while len(tokens) < MAX_NEW and (not tokens or tokens[-1] != tokenizer.eos_token_id):
            out = core.step({"input_ids": torch.tensor([step_ids])}, prompt, position, position == 0, Sampling(),
                            len(tokens), route=Route.EXIT)
            position += len(step_ids)
            step_ids = [int(out.exit["next_token"][0])]
            tokens += step_ids
        answers[prompt] = tokens
    torch.set_num_threads(threads)
    return answers


@pytest.fixture(scope="module")
def split(request):
    namespace = f"flow_{uuid.uuid4().hex[:6]}"
    processes = Processes()
    client = Client(namespace)
    try:
        start_split(processes, namespace, FRONT)
        for reference in ("reference", "exit_reference"):  # while the chain starts
            request.getfixturevalue(reference)
        client.wait_until_serving()
        yield client
    finally:
        client.close()
        processes.stop_all()


def test_speculative_decoding_answers_the_whole_models_greedy_tokens(split, reference):
    for prompt in PROMPTS:
        result = split.generate(prompt, policy="speculative", drafter="ngram", draft_tokens=4)
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert list(result.token_ids) == reference[prompt], prompt
        assert result.policy == "speculative" and len(result.token_sources) == len(result.token_ids)
        accepted = sum(s == InferenceResult.SOURCE_DRAFT_NGRAM for s in result.token_sources)
        assert accepted == result.accepted <= result.drafted
        # each pass gives its kept drafts and one token of its own (the last pass may end on a kept end token)
        assert 0 <= result.verify_passes - (len(result.token_ids) - accepted) <= 1
        REPORTED.append(f"flow: speculative (prompt lookup, 4 drafts) on {prompt[:30]!r}: {len(result.token_ids)} "
                        f"tokens in {result.verify_passes} passes, {result.accepted}/{result.drafted} drafts kept")
    copy = split.generate(PROMPTS[0], policy="speculative", drafter="ngram", draft_tokens=4)
    assert copy.verify_passes < len(copy.token_ids) * 0.7  # copying: most tokens come as kept drafts


def test_chain_policy_and_default_give_the_whole_models_tokens_from_the_chain(split, reference):
    for policy in ("chain", ""):
        result = split.generate(PROMPTS[1], policy=policy)
        assert list(result.token_ids) == reference[PROMPTS[1]]
        assert set(result.token_sources) == {InferenceResult.SOURCE_CHAIN} and result.policy == "chain"


def test_device_answers_with_the_robots_exit_alone(split, exit_reference):
    for prompt in PROMPTS[1:]:
        result = split.generate(prompt, policy="device")
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert list(result.token_ids) == exit_reference[prompt]
        assert set(result.token_sources) == {InferenceResult.SOURCE_EXIT} and not result.degraded


def test_cascade_takes_the_exit_where_it_is_sure_and_the_chain_elsewhere(split, reference, exit_reference):
    prompt = PROMPTS[2]
    always_exit = split.generate(prompt, policy="cascade", cascade_threshold=1e-6)
    assert list(always_exit.token_ids) == exit_reference[prompt]
    assert set(always_exit.token_sources) == {InferenceResult.SOURCE_EXIT}
    never_sure = split.generate(prompt, policy="cascade", cascade_threshold=1.0)
    assert list(never_sure.token_ids) == reference[prompt]
    assert set(never_sure.token_sources) == {InferenceResult.SOURCE_CHAIN}
    mixed = split.generate(prompt, policy="cascade", cascade_threshold=0.5)
    sources = list(mixed.token_sources)
    assert mixed.error_code == InferenceResult.ERROR_NONE and len(sources) == len(mixed.token_ids)
    on_robot = sources.count(InferenceResult.SOURCE_EXIT)
    REPORTED.append(f"flow: cascade at 0.5 on {prompt!r}: {on_robot} of {len(sources)} tokens decided on the robot")


def test_the_gateways_cascade_threshold_and_default_policy_change_live_where_tokens_are_decided(split):
    parameters = AsyncParameterClient(split.node, "gateway")
    assert parameters.wait_for_services(timeout_sec=30)

    def set_gateway(name: str, value) -> None:
        future = parameters.set_parameters([Parameter(name, value=value)])
        assert split.spin_until(future.done, 30)
        assert future.result().results[0].successful, future.result().results[0].reason

    prompt = PROMPTS[2]
    try:
        set_gateway("cascade_threshold", 1e-6)  # the request names no threshold: the gateway's decides
        assert set(split.generate(prompt, 6, policy="cascade").token_sources) == {InferenceResult.SOURCE_EXIT}
        set_gateway("cascade_threshold", 1.0)
        assert set(split.generate(prompt, 6, policy="cascade").token_sources) == {InferenceResult.SOURCE_CHAIN}
        set_gateway("default_policy", "device")
        device = split.generate(prompt, 6)
        assert device.policy == "device" and set(device.token_sources) == {InferenceResult.SOURCE_EXIT}
    finally:
        set_gateway("cascade_threshold", 0.8)
        set_gateway("default_policy", "chain")
    refused = parameters.set_parameters([Parameter("default_policy", value="telepathy")])
    assert split.spin_until(refused.done, 30) and not refused.result().results[0].successful


def test_speculative_with_the_exit_drafting_answers_the_whole_models_greedy_tokens(split, reference):
    for prompt in PROMPTS[1:]:
        result = split.generate(prompt, policy="speculative", drafter="exit", draft_tokens=3, cascade_threshold=0.3)
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert list(result.token_ids) == reference[prompt]
        assert result.drafted > 0 and result.accepted == result.token_sources.count(InferenceResult.SOURCE_DRAFT_EXIT)
        REPORTED.append(f"flow: speculative (exit drafts, 3) on {prompt!r}: {len(result.token_ids)} tokens in "
                        f"{result.verify_passes} passes, {result.accepted}/{result.drafted} drafts kept")


def test_with_the_edge_taken_away_mid_request_the_robot_finishes_the_answer_flagged_degraded(processes, reference):
    namespace = f"flow_cut_{uuid.uuid4().hex[:6]}"
    # patient enough that a loaded machine's prefill is not taken for a cut
    started = start_split(processes, namespace, FRONT, "-p", "degrade_after_s:=10.0")
    client = Client(namespace)
    try:
        client.wait_until_serving()
        results = client.collect(InferenceResult, "results", CONTROL)
        requests = client.publisher(InferenceRequest, "requests", CONTROL)
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=PROMPTS[2])
        request.options.max_new_tokens = MAX_NEW
        requests.publish(request)
        assert client.spin_until(lambda: sum(len(r.token_ids) for r in results) >= 3, 120), "no tokens"
        started["back"].kill()  # the edge's shard, gone mid-request
        started["back"].wait(10)
        assert client.spin_until(lambda: any(r.final for r in results), 120), "no final result"
        final = next(r for r in results if r.final)
        assert final.error_code == InferenceResult.ERROR_NONE, final.error_message
        assert final.degraded and final.policy == "device"
        sources = [s for r in results for s in r.token_sources]
        tokens = [t for r in results for t in r.token_ids]
        first_exit = sources.index(InferenceResult.SOURCE_EXIT)
        assert first_exit >= 3 and set(sources[:first_exit]) == {InferenceResult.SOURCE_CHAIN}
        assert tokens[:first_exit] == reference[PROMPTS[2]][:first_exit]
        after = client.generate(PROMPTS[1], max_new_tokens=4)  # the chain is gone: a new request starts on the exit
        assert after.error_code == InferenceResult.ERROR_NONE and after.degraded
        REPORTED.append(f"flow: edge shard killed after {first_exit} tokens: {len(tokens) - first_exit} more from "
                        "the robot's exit, result degraded")
    finally:
        client.close()
