"""Encoder nodes through ROS: one process holding the odometry, IMU, scan and text encoders (the compose way),
fed by this process; bad input is logged and the nodes keep publishing."""

from __future__ import annotations

import math
import pathlib
import uuid

import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import SemanticTokens, Vocabulary
from parameter_calls import set_parameters
from sensor_msgs.msg import Imu, LaserScan
from std_msgs.msg import String

from conftest import finish
from edge_lam.model.loading import load_tokenizer
from edge_lam.ros.bounds import DIAGNOSTICS_DEPTH
from edge_lam.ros.qos import TOKENS, VOCABULARIES
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODALITIES = ("imu", "odometry", "scan", "text")


@pytest.fixture(scope="module")
def encoders():
    """The four encoders in one process, and a client; yields (client, tokens by modality, vocabularies, process)."""
    from conftest import Processes

    processes = Processes()
    namespace = f"enc_{uuid.uuid4().hex[:8]}"
    process = processes.start(
        LIB / "compose", "odometry_encoder:odometry_encoder", "imu_encoder:imu_encoder", "scan_encoder:scan_encoder",
        "text_encoder:text_encoder", "--ros-args", "-r", f"__ns:=/{namespace}", "-p", "reliable_input:=true",
        "-p", "robot_id:=tb3_0",
    )
    client = RosClient("encoder_test_client", namespace)
    vocabularies = {m: client.collect(Vocabulary, f"tokens/{m}/vocabulary", VOCABULARIES) for m in MODALITIES}
    tokens = {m: client.collect(SemanticTokens, f"tokens/{m}", TOKENS) for m in MODALITIES}
    try:
        assert client.spin_until(lambda: all(vocabularies.values()), 60), "the encoders published no vocabularies"
        yield client, tokens, {m: v[0] for m, v in vocabularies.items()}, process
    finally:
        client.close()
        processes.stop_all()


def words(msg: SemanticTokens, vocabulary: Vocabulary) -> list[str]:
    return [vocabulary.words[i] for i in msg.token_ids]


def scan(ranges: list[float]) -> LaserScan:
    msg = LaserScan()
    msg.header.frame_id = "laser"
    msg.angle_min, msg.angle_increment = -math.pi, 2 * math.pi / len(ranges)
    msg.angle_max = msg.angle_min + msg.angle_increment * (len(ranges) - 1)
    msg.range_min, msg.range_max = 0.1, 10.0
    msg.ranges = [float(r) for r in ranges]
    return msg


def test_every_encoder_publishes_its_vocabulary_latched(encoders):
    _, _, vocabularies, _ = encoders
    assert {v.modality for v in vocabularies.values()} == set(MODALITIES)
    assert "forward-slow left-fast" in vocabularies["odometry"].words
    assert "front 0.3-0.6m" in vocabularies["scan"].words
    assert len(vocabularies["text"].words) == 49152


def test_scan_tokens_name_the_obstacle_and_a_bad_scan_is_logged_and_skipped(encoders):
    client, tokens, vocabularies, _ = encoders
    ranges = np.full(360, np.inf)
    ranges[175:185] = 0.5  # rays around angle 0: straight ahead
    publisher = client.publisher(LaserScan, "scan", TOKENS)
    publisher.publish(scan(ranges))
    bad = scan(ranges)
    bad.ranges = bad.ranges[:100]  # fewer ranges than the angles say
    publisher.publish(bad)
    ranges[175:185] = np.inf
    ranges[85:95] = 0.2  # on the right (negative angles), very near
    publisher.publish(scan(ranges))
    # One topic keeps its order: tokens of the bad scan would come between the two (and take sequence number 1).
    assert client.spin_until(lambda: len(tokens["scan"]) >= 2, 30)
    first, second = tokens["scan"][:2]
    assert words(first, vocabularies["scan"])[0] == "front 0.3-0.6m"
    assert "right <0.3m" in words(second, vocabularies["scan"])
    assert "front clear" in words(second, vocabularies["scan"])
    assert [first.seq, second.seq] == [0, 1] and first.robot_id == "tb3_0"
    assert np.isclose(first.scores[0], 0.5)


def imu(stamp_s: float, yaw_rate: float) -> Imu:
    msg = Imu()
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp_s), round((stamp_s % 1) * 1e9)
    msg.header.frame_id = "base_link"
    msg.orientation_covariance[0] = -1.0  # no orientation given
    msg.angular_velocity.z = yaw_rate
    msg.linear_acceleration.z = 9.80665
    return msg


def test_imu_windows_give_turn_tokens_and_a_nan_sample_is_rejected(encoders):
    client, tokens, vocabularies, _ = encoders
    publisher = client.publisher(Imu, "imu", TOKENS)
    for i in range(160):  # 1.6 s at the sensor's 100 Hz: three 0.5 s windows close
        msg = imu(100.0 + i / 100, 0.8)
        if i == 50:
            msg.angular_velocity.x = float("nan")
        publisher.publish(msg)
        client.spin_for(0.01)
    assert client.spin_until(lambda: len(tokens["imu"]) >= 3, 30)
    assert [words(m, vocabularies["imu"]) for m in tokens["imu"][:3]] == [["steady left-fast"]] * 3
    assert tokens["imu"][0].header.stamp.sec == 100 and tokens["imu"][0].header.stamp.nanosec == 490_000_000


def test_a_raw_imu_as_drivers_publish_it_gives_tokens(encoders):
    """Real data: imu/data_raw carries an all-zero orientation and all-zero covariances (not -1); every sample was
    rejected. The encoder reads angular velocity and acceleration only, so it must give tokens."""
    client, tokens, vocabularies, _ = encoders
    before = len(tokens["imu"])
    publisher = client.publisher(Imu, "imu", TOKENS)
    for i in range(120):  # 1.2 s at 100 Hz, after the stamps of the test above
        msg = imu(200.0 + i / 100, -0.8)
        msg.orientation.w = 0.0
        msg.orientation_covariance[0] = 0.0
        publisher.publish(msg)
        client.spin_for(0.01)
    # The first sample closes the window the test above left open; two windows of raw samples follow.
    assert client.spin_until(lambda: len(tokens["imu"]) >= before + 3, 30), "a raw IMU gave no tokens"
    assert [words(m, vocabularies["imu"]) for m in tokens["imu"][before + 1:before + 3]] == [["steady right-fast"]] * 2


def test_text_becomes_the_models_token_ids_and_empty_text_is_rejected(encoders):
    client, tokens, vocabularies, _ = encoders
    publisher = client.publisher(String, "text", TOKENS)
    publisher.publish(String(data=""))
    publisher.publish(String(data="Turn left at the charging dock."))
    assert client.spin_until(lambda: tokens["text"], 30)
    msg = tokens["text"][0]
    assert msg.seq == 0, "the empty text, sent first, got tokens"
    expected = load_tokenizer("smollm2-135m-instruct")("Turn left at the charging dock.", add_special_tokens=False)
    assert list(msg.token_ids) == expected.input_ids
    assert "".join(words(msg, vocabularies["text"])) == "Turn left at the charging dock."


def test_text_is_bounded_before_it_is_tokenized_and_the_bounds_are_live(encoders):
    """A 10 MB string was tokenized whole before max_tokens was checked (seconds, a gigabyte): text over
    max_text_chars is refused untokenized; `ros2 param set` of max_text_chars and stats_period_s takes effect."""
    client, tokens, _, _ = encoders
    logs = client.collect_logs()
    diagnostics = client.collect(DiagnosticArray, "/diagnostics", DIAGNOSTICS_DEPTH)
    node = f"{client.node.get_namespace()}/text_encoder"
    publisher = client.publisher(String, "text", TOKENS)

    def refused(bound: str) -> bool:
        return any(log.name.endswith("text_encoder") and bound in log.msg for log in logs)

    publisher.publish(String(data="go " * 1_000_000))
    assert client.spin_until(lambda: refused("longer than max_text_chars=8192: refused untokenized"), 30)
    assert all(r.successful for r in set_parameters(client, node, max_text_chars=10, stats_period_s=0.2))
    assert not set_parameters(client, node, max_text_chars=0)[0].successful
    before = len(tokens["text"])
    publisher.publish(String(data="Turn left now."))
    assert client.spin_until(lambda: refused("max_text_chars=10"), 30)
    assert all(r.successful for r in set_parameters(client, node, max_text_chars=8192))
    publisher.publish(String(data="Turn left now."))
    assert client.spin_until(lambda: len(tokens["text"]) > before, 30)
    assert "".join(load_tokenizer("smollm2-135m-instruct").decode(tokens["text"][before].token_ids)) == \
        "Turn left now."
    # the node's diagnostics show how close texts come to the bounds
    assert client.spin_until(lambda: any(
        status.name == f"{node}: bounds" and {(kv.key, kv.value) for kv in status.values} == {
            ("text_chars", "14 / 8192"), ("text_tokens", f"{len(tokens['text'][before].token_ids)} / 512")}
        for array in diagnostics for status in array.status), 30)

    def stats_lines() -> int:
        return sum(log.name.endswith("text_encoder") and " text inputs, " in log.msg for log in logs)

    assert client.spin_until(lambda: stats_lines() >= 3, 5), "stats_period_s=0.2 did not take effect"
    assert all(r.successful for r in set_parameters(client, node, stats_period_s=0.0))


def test_rejected_input_is_logged_and_the_process_keeps_running(encoders):
    _, _, _, process = encoders
    assert process.poll() is None, "the encoders' process ended"
    process.send_signal(2)
    _, output = finish(process, timeout_s=15)
    assert "rejected scan" in output and "has 100 ranges" in output
    assert "rejected imu sample" in output and "nan" in output.lower()
    assert "rejected text" in output and "empty text" in output
