"""Encoder nodes through ROS: one process holding the odometry, IMU, scan and text encoders (the compose way),
fed by this process; bad input is logged and the nodes keep publishing."""

from __future__ import annotations

import math
import pathlib
import uuid

import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import SemanticTokens, Vocabulary
from sensor_msgs.msg import Imu, LaserScan
from std_msgs.msg import String

from conftest import finish
from edge_lam.model.loading import load_tokenizer
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


def test_rejected_input_is_logged_and_the_process_keeps_running(encoders):
    _, _, _, process = encoders
    assert process.poll() is None, "the encoders' process ended"
    process.send_signal(2)
    _, output = finish(process, timeout_s=15)
    assert "rejected scan" in output and "has 100 ranges" in output
    assert "rejected imu sample" in output and "nan" in output.lower()
    assert "rejected text" in output and "empty text" in output
