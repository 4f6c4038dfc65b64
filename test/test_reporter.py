"""The bridge from sensors to the LAM through ROS: encoder tokens, verbalised by the reporter, answered by the model
(one shard holding the whole of SmolLM2, and the gateway), with the reply the whole model gives to that prompt."""

from __future__ import annotations

import math
import pathlib
import time
import uuid

import numpy as np
import pytest
import torch
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceRequest, InferenceResult, Report
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log
from sensor_msgs.msg import LaserScan

from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.ros.qos import CONTROL, TOKENS
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 24


@pytest.fixture
def graph(processes, tmp_path):
    namespace = f"rep_{uuid.uuid4().hex[:8]}"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "/**/whole_model": {"ros__parameters": {"model": MODEL, "modules": ["embedding", "blocks:0:30", "head"],
                                                "input_topic": "chain/input", "output_topic": "chain/output"}},
        "/**/reporter": {"ros__parameters": {"modalities": ["odometry", "scan"], "period_s": 1.0,
                                             "max_new_tokens": MAX_NEW}},
        "/**": {"ros__parameters": {"reliable_input": True}},
    }))
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", str(params)]
    processes.start(LIB / "compose", "shard:whole_model", "gateway:gateway", *args)
    processes.start(LIB / "compose", "odometry_encoder:odometry_encoder", "scan_encoder:scan_encoder",
                    "reporter:reporter", *args)
    client = RosClient("reporter_test_client", namespace)
    try:
        yield client
    finally:
        client.close()


def driving_forward(step: int) -> Odometry:
    msg = Odometry()
    t = 50.0 + step * 0.05  # 20 Hz
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), round((t % 1) * 1e9)
    msg.pose.pose.position.x = 0.3 * (t - 50.0)
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = 0.3
    return msg


def wall_ahead() -> LaserScan:
    ranges = np.full(360, np.inf, dtype=np.float32)
    ranges[170:190] = 0.4
    step = 2 * math.pi / 360
    return LaserScan(angle_min=-math.pi, angle_increment=step, angle_max=-math.pi + 359 * step,
                     range_min=0.1, range_max=10.0, ranges=ranges.tolist())


def greedy(prompt: str) -> str:
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_sensor_tokens_become_a_prompt_and_the_model_reports_on_them(graph):
    client = graph
    results = client.collect(InferenceResult, "results", CONTROL)
    reports = client.collect(Report, "reports", CONTROL)
    odometry = client.publisher(Odometry, "odom", TOKENS, timeout_s=60)
    scans = client.publisher(LaserScan, "scan", TOKENS, timeout_s=60)
    step = 0

    def sensors_until(done, timeout_s: float) -> bool:
        nonlocal step
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            odometry.publish(driving_forward(step))
            if step % 4 == 0:
                scans.publish(wall_ahead())
            step += 1
            client.spin_for(0.05)
        return True

    # This client reads the requests from the start, likely before the gateway does: the reporter waits for a node
    # that reads them and writes results, so its first request is answered (or refused while the chain still
    # loads), not sent to this reader alone and given up after answer_timeout_s.
    requests = client.collect(InferenceRequest, "requests", CONTROL)
    assert sensors_until(lambda: requests, 180), "the reporter sent no request"
    first = lambda: [r for r in results if r.final and r.request_id == requests[0].request_id]  # noqa: E731
    assert sensors_until(first, 120), "the reporter's first request went to no gateway"
    both = ["odometry/odometry", "scan/scan"]

    def checked() -> list[Report]:
        """Reports on both sensors of requests this client read (the first tick may find one sensor's tokens)."""
        seen = {r.request_id for r in requests}
        return [r for r in reports if r.request_id in seen and r.sources == both]

    assert sensors_until(checked, 180), f"no report on both sensors: {[(r.sources, r.error_code) for r in reports]}"
    report = checked()[0]
    finals = lambda: [r for r in results if r.final and r.request_id == report.request_id]  # noqa: E731
    assert client.spin_until(finals, 30) and not finals()[0].error_code, "the gateway did not answer the request"
    prompt = next(r.prompt for r in requests if r.request_id == report.request_id)
    assert "- odometry (odometry): forward-fast none" in prompt, prompt
    assert "- scan (scan): front 0.3-0.6m" in prompt, prompt
    assert report.prompt == prompt and not report.error_code, report.error_message
    assert report.text and report.text == greedy(prompt), (report.text, prompt)
    assert report.sources == both and report.robot_id == "robot"

    # Where the time went: the encoders' own time, every module of the chain, and stages that add up to the total.
    stages = {t.stage: t for t in report.timings}
    assert 0 < stages["encode"].seconds < 1.0
    assert {"module:embedding", "module:blocks_0_30", "module:head"} <= set(stages)
    parts = sum(t.seconds for t in report.timings if t.stage != "total")
    assert stages["total"].seconds == pytest.approx(parts, rel=1e-6)
    assert stages["total"].seconds == pytest.approx(stages["encode"].seconds + report.latency_s, rel=1e-6)
    assert stages["module:blocks_0_30"].seconds > stages["module:embedding"].seconds  # 30 blocks vs. a lookup


def test_a_chain_still_coming_is_a_warning_once_and_an_error_only_after_the_answer_timeout(processes, tmp_path):
    """A gateway with no chain behind it refuses every request as unavailable, as at every start while the shards
    load: the reporter warns once, and says ERROR only once that has lasted past answer_timeout_s."""
    namespace = f"rep_{uuid.uuid4().hex[:8]}"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/reporter": {"ros__parameters": {
        "modalities": ["odometry"], "period_s": 0.5, "answer_timeout_s": 3.0}}}))
    processes.start(LIB / "compose", "gateway:gateway", "odometry_encoder:odometry_encoder", "reporter:reporter",
                    "--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", str(params))
    client = RosClient("reporter_start_client", namespace)
    try:
        logs = client.collect_logs()
        results = client.collect(InferenceResult, "results", CONTROL)
        odometry = client.publisher(Odometry, "odom", TOKENS, timeout_s=60)

        def reporter_says(level: int) -> list[str]:
            return [log.msg for log in logs if log.name.endswith("reporter") and log.level == level]

        step = 0
        deadline = time.monotonic() + 120
        while not reporter_says(Log.ERROR) and time.monotonic() < deadline:
            odometry.publish(driving_forward(step))
            step += 1
            client.spin_for(0.05)
        refused = [r for r in results if r.final and r.error_code == InferenceResult.ERROR_MODULE_UNAVAILABLE]
        assert len(refused) >= 2, "the gateway did not refuse the reports as unavailable"
        warnings = [m for m in reporter_says(Log.WARN) if "not serving yet" in m]
        assert len(warnings) == 1, reporter_says(Log.WARN)
        (error, *_) = reporter_says(Log.ERROR)
        assert "has not served for" in error
        first_error = next(i for i, log in enumerate(logs) if log.level == Log.ERROR and log.name.endswith("reporter"))
        assert any("not serving yet" in log.msg for log in logs[:first_error])
    finally:
        client.close()
