"""Real bags replayed at their real rate through the encoder nodes: one token message per camera frame and every
odometry window, in order, none lost (checked against the cores run on the same bag messages in this process)."""

from __future__ import annotations

import pathlib
import uuid

import pytest
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import SemanticTokens, Vocabulary
from nav_msgs.msg import Odometry
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage

from conftest import REPORTED, finish
from edge_lam.assets.cache import camera_bag_dir, evo_bags_dir
from edge_lam.encoders.motion import OdometryMotionEncoder, OdometrySample, yaw_from_quaternion
from edge_lam.ros.qos import TOKENS, VOCABULARIES
from ros_client import RosClient

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
CAMERA_TOPIC = "/camera/image_raw/compressed"
ODOM_START_S, ODOM_SECONDS = 30.0, 15.0  # a slice of the 97 s Nav2 run, replayed at its real rate


def bag_messages(bag: pathlib.Path, topic: str, msg_type, start_s: float = 0.0, seconds: float = 1e9) -> list:
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        start = reader.start_time + int(start_s * 1e9)
        connections = [c for c in reader.connections if c.topic == topic]
        return [deserialize_message(raw, msg_type)
                for _, t, raw in reader.messages(connections=connections, start=start, stop=start + int(seconds * 1e9))]


def stamp(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


def offline_odometry_tokens(messages: list[Odometry]) -> list[tuple[int, tuple[int, int]]]:
    """What the odometry node should publish: the core's tokens, stamped with the last sample of each window."""
    encoder, previous, tokens = OdometryMotionEncoder(), None, []
    for msg in messages:
        q, twist = msg.pose.pose.orientation, msg.twist.twist
        encoded = encoder.add(OdometrySample(
            stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, x=msg.pose.pose.position.x,
            y=msg.pose.pose.position.y, yaw=yaw_from_quaternion(q.x, q.y, q.z, q.w), linear_x=twist.linear.x,
            angular_z=twist.angular.z,
        ))
        if encoded is not None:
            tokens.append((int(encoded.ids[0]), stamp(previous.header)))
        previous = msg
    return tokens


@pytest.fixture
def encoders(processes, tmp_path):
    namespace = f"bag_{uuid.uuid4().hex[:8]}"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"reliable_input": True, "robot_id": "tb3_0"}},
        "/**/camera_classes": {"ros__parameters": {"encoder": "efficientnet_lite0"}},
        "/**/camera_patches": {"ros__parameters": {"encoder": "patch_vq"}},
    }))
    processes.start(LIB / "compose", "camera_encoder:camera_classes", "camera_encoder:camera_patches",
                    "odometry_encoder:odometry_encoder", "--ros-args", "-r", f"__ns:=/{namespace}",
                    "--params-file", str(params))
    client = RosClient("bag_test_client", namespace)
    image_words = client.collect(Vocabulary, "tokens/image/vocabulary", VOCABULARIES)
    motion_words = client.collect(Vocabulary, "tokens/odometry/vocabulary", VOCABULARIES)
    try:
        assert client.spin_until(lambda: len(image_words) == 2 and motion_words, 60), "the encoders did not come up"
        yield namespace, client
    finally:
        client.close()


def test_replayed_bags_give_one_token_message_per_frame_and_window_in_order(encoders, processes):
    namespace, client = encoders
    images = client.collect(SemanticTokens, "tokens/image", TOKENS)
    motion = client.collect(SemanticTokens, "tokens/odometry", TOKENS)
    frames = bag_messages(camera_bag_dir(), CAMERA_TOPIC, CompressedImage)
    odometry = bag_messages(evo_bags_dir() / "nav2_turtlebot.mcap", "/odom", Odometry, ODOM_START_S, ODOM_SECONDS)
    expected_motion = offline_odometry_tokens(odometry)
    replays = [
        processes.start(LIB / "edge-lam", "replay", camera_bag_dir(), "--remap",
                        f"{CAMERA_TOPIC}:=/{namespace}/image_raw/compressed", "--wait-subscribers", "2"),
        processes.start(LIB / "edge-lam", "replay", evo_bags_dir() / "nav2_turtlebot.mcap", "--topics", "/odom",
                        "--start-offset", str(ODOM_START_S), "--duration", str(ODOM_SECONDS),
                        "--remap", f"/odom:=/{namespace}/odom", "--wait-subscribers", "1"),
    ]
    client.spin_until(lambda: all(r.poll() is not None for r in replays), ODOM_SECONDS + 60)
    client.spin_until(lambda: len(images) >= 2 * len(frames) and len(motion) >= len(expected_motion), 10)
    for replay in replays:
        rc, output = finish(replay, timeout_s=15)
        assert rc == 0, output
        REPORTED.append("replay into the encoders: " + output.strip().splitlines()[-1])

    assert len(frames) == 60 and len(expected_motion) >= 25
    for encoder in ("efficientnet-lite0", "patch-vq"):
        tokens = [m for m in images if m.encoder == encoder]
        assert [stamp(m.header) for m in tokens] == [stamp(f.header) for f in frames], encoder
        assert [m.seq for m in tokens] == list(range(len(frames)))
    assert [(m.token_ids[0], stamp(m.header)) for m in motion] == expected_motion
    assert {m.robot_id for m in images + motion} == {"tb3_0"}
