"""Gemma 3 270M served over real DDS: three shards (two processes) behind a gateway (config/gemma3_chain.yaml)
answer with the whole model's greedy tokens. Skipped where setup skipped Gemma (its terms of use)."""

from __future__ import annotations

import pathlib
import time
import uuid

from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceResult
from edge_lam_msgs.srv import Generate

from conftest import GEMMA, REPO, REPORTED, requires_gemma
from model_reference import greedy_tokens
from ros_client import RosClient

pytestmark = requires_gemma

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
PARAMS = REPO / "config" / "gemma3_chain.yaml"
PROMPT = "A robot arm has three joints:"
MAX_NEW = 8


def generate(client: RosClient, service, prompt: str, max_new_tokens: int) -> InferenceResult:
    call = Generate.Request()
    call.request.prompt = prompt
    call.request.options.max_new_tokens = max_new_tokens
    future = service.call_async(call)
    assert client.spin_until(future.done, 120), "the gateway did not answer"
    return future.result().result


def test_three_gemma_shards_behind_a_gateway_answer_as_the_whole_model(processes):
    namespace = f"gemma_{uuid.uuid4().hex[:6]}"
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", PARAMS, "-p", "wire_dtype:=float32"]
    processes.start(LIB / "compose", "shard:front_shard", "shard:middle_shard", *args)  # two shards, one process
    processes.start(LIB / "shard", *args, "-r", "__node:=head_shard")
    processes.start(LIB / "gateway", *args)
    reference = greedy_tokens([PROMPT], MAX_NEW, GEMMA)[PROMPT]  # while the shards load
    client = RosClient("gemma_chain_client", namespace)
    try:
        service = client.node.create_client(Generate, "generate")
        assert service.wait_for_service(timeout_sec=60), "no gateway"
        deadline = time.monotonic() + 120
        while (result := generate(client, service, "Hi", 1)).error_code == InferenceResult.ERROR_MODULE_UNAVAILABLE:
            assert time.monotonic() < deadline, result.error_message  # the shards are still loading
            time.sleep(0.5)
        started = time.monotonic()
        result = generate(client, service, PROMPT, MAX_NEW)
        assert result.error_code == InferenceResult.ERROR_NONE, result.error_message
        assert list(result.token_ids) == reference, f"{result.text!r}"
        REPORTED.append(f"Gemma 3 270M, 3 shards over DDS (fp32 wire): {MAX_NEW} tokens in "
                        f"{time.monotonic() - started:.1f} s, the whole model's greedy tokens: {result.text!r}")
    finally:
        client.close()
