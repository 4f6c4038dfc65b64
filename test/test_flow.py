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
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceResult
from edge_lam_msgs.srv import Generate

from conftest import REPORTED, Processes
from model_reference import greedy_tokens
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 24
# The first answer copies its prompt (prompt lookup drafts it well); the second does not (this model does not repeat
# the list), so every draft is wrong; the third is a question.
PROMPTS = ['Write the sentence "The robot is moving forward slowly and turning left near the charging station" again.',
           "Repeat this list exactly: red, green, blue, red, green, blue, red, green, blue.", "What is a robot?"]
FRONT = ["embedding", "blocks:0:15"]
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
        while (result := self.generate("Hi", 1)).error_code == InferenceResult.ERROR_MODULE_UNAVAILABLE:
            assert time.monotonic() < deadline, result.error_message
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
def split():
    namespace = f"flow_{uuid.uuid4().hex[:6]}"
    processes = Processes()
    client = Client(namespace)
    try:
        start_split(processes, namespace, FRONT)
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
    copy, wrong = (split.generate(p, policy="speculative", drafter="ngram", draft_tokens=4) for p in PROMPTS[:2])
    assert copy.verify_passes < len(copy.token_ids) * 0.7  # copying: most tokens come as kept drafts
    assert wrong.drafted > 0 and wrong.accepted == 0  # every draft rejected, the answer still the whole model's


def test_chain_policy_and_default_give_the_whole_models_tokens_from_the_chain(split, reference):
    for policy in ("chain", ""):
        result = split.generate(PROMPTS[1], policy=policy)
        assert list(result.token_ids) == reference[PROMPTS[1]]
        assert set(result.token_sources) == {InferenceResult.SOURCE_CHAIN} and result.policy == "chain"
