"""The chosen transport really carries the stream, across emulated hosts (network namespaces: every byte between the
robot and the edge is UDP through the robot's link, the inter-host Fast DDS profile, SUBNET discovery); and
``edge-lam transport`` gives its advice from a fleet's adverts.

The camera bag is replayed in the robot host and the demo graph's camera encoder started where its transport puts it
(``encoder_processes``); a listener in the edge host takes the tokens and reads the robot link's byte counters
between its first and its last token. With ``raw`` the encoder runs in the edge host and makes its tokens from the
frames that crossed: about a JPEG frame per token crosses. With ``tokens`` it runs in the robot host and only token
messages cross. That test needs root (network namespaces) and is skipped otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from edge_lam_msgs.msg import ComputeAdvert, SemanticTokens

from conftest import REPORTED, finish
from edge_lam.assets.cache import camera_bag_dir
from edge_lam.demo.graph import DemoConfig, HostSpec, bag_sensors, encoder_processes, replay_processes
from edge_lam.descriptors import Advert, Link
from edge_lam.hosts import EmulatedHosts, down_prefix, has_rights
from edge_lam.hosts.joining import joined
from edge_lam.ros.qos import ADVERTS, TOKENS
from edge_lam.wire.fleet import to_advert_msg
from ros_client import RosClient

needs_root = pytest.mark.skipif(not has_rights(), reason="emulated hosts are network namespaces: needs root "
                                "(CAP_NET_ADMIN and CAP_SYS_ADMIN)")

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
CONFIG = pathlib.Path(get_package_share_directory("edge_lam")) / "config"
PREFIX = f"el{os.environ['ROS_DOMAIN_ID']}t"  # this run's namespaces: el<domain>t-robot, el<domain>t-edge
TOKENS_WANTED = 25
LISTEN_TIMEOUT_S = 180.0


@pytest.fixture
def hosts(monkeypatch) -> Iterator[EmulatedHosts]:
    """A robot and an edge host, taken apart (with any process left in them) whatever the test did."""
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(CONFIG / "fastdds_interhost.xml"))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    down_prefix(PREFIX)  # what a crashed run of this domain left
    with EmulatedHosts(["robot", "edge"], prefix=PREFIX) as emulated:
        yield emulated


def camera_config() -> DemoConfig:
    bag = camera_bag_dir() / "bag.mcap"
    return DemoConfig(robot_id="tb3", hosts=(HostSpec.parse("robot:robot:1:320"), HostSpec.parse("edge:edge:1:480")),
                      model="smollm2-135m-instruct", sensors=tuple(bag_sensors(bag)), period_s=5.0, max_new_tokens=8,
                      start_offset_s=0.0, params_file=CONFIG / "demo.yaml")


def bag_frames() -> tuple[set[int], float]:
    """The frames' header stamps (ns) and their mean serialized size."""
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from sensor_msgs.msg import CompressedImage

    stamps, sizes = set(), []
    with AnyReader([camera_bag_dir() / "bag.mcap"]) as reader:
        for _, _, raw in reader.messages():
            msg = deserialize_message(raw, CompressedImage)
            stamps.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            sizes.append(len(raw))
    return stamps, sum(sizes) / len(sizes)


def _listen(namespace: str) -> dict:
    """In the edge host: the image tokens' stamps and encoders, and the robot link's bytes (both ways) between the
    first token and the last."""
    with joined(namespace):
        hosts = EmulatedHosts.attach(PREFIX)
        client = RosClient("transport_listener", "/tb3")
        try:
            tokens = client.collect(SemanticTokens, "tokens/image", TOKENS)
            assert client.spin_until(lambda: tokens, LISTEN_TIMEOUT_S), "no image tokens reached the edge host"
            first, before = len(tokens), hosts.counters("robot")
            assert client.spin_until(lambda: len(tokens) >= first + TOKENS_WANTED, 120), \
                f"only {len(tokens) - first} more image tokens in 120 s"
            after, count = hosts.counters("robot"), len(tokens) - first
            return {"stamps": [t.header.stamp.sec * 10**9 + t.header.stamp.nanosec for t in tokens],
                    "encoders": {t.encoder for t in tokens}, "tokens": count,
                    "embedding_shapes": {tuple(t.embedding.shape) for t in tokens},
                    "link_bytes": (after.rx_bytes - before.rx_bytes) + (after.tx_bytes - before.tx_bytes)}
        finally:
            client.close()


def carried(processes, hosts: EmulatedHosts, transport: str) -> dict:
    """Run the camera stream with ``transport`` and listen on the edge; what the listener saw, and where the
    encoder ran."""
    config = camera_config()
    (encoder,) = encoder_processes(config, LIB, {"image": transport})
    started = [processes.start(*hosts.command(encoder.host, encoder.argv))]
    started += [processes.start(*hosts.command(r.host, r.argv)) for r in replay_processes(config, LIB)]
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        seen = pool.apply_async(_listen, (hosts.namespace("edge"),)).get(LISTEN_TIMEOUT_S + 150)
    finally:
        pool.terminate()
        pool.join()
        for process in started:
            process.terminate()
            process.wait(30)
    return {**seen, "encoder_host": encoder.host}


@needs_root
def test_raw_frames_cross_the_link_to_the_edge_encoder_and_tokens_alone_do_not(processes, hosts):
    stamps, frame_bytes = bag_frames()
    raw = carried(processes, hosts, "raw")
    assert raw["encoder_host"] == "edge"
    assert raw["encoders"] == {"efficientnet-lite0"}
    assert set(raw["stamps"]) <= stamps  # made from the bag's frames, which crossed to the edge host
    assert raw["embedding_shapes"] == {()}  # embedding_dtype none: words go back to the reporter, not features
    raw_per_token = raw["link_bytes"] / raw["tokens"]
    assert raw_per_token > 0.8 * frame_bytes, raw  # 25 frames in a row: about the bag's mean

    tokens = carried(processes, hosts, "tokens")
    assert tokens["encoder_host"] == "robot" and set(tokens["stamps"]) <= stamps
    assert tokens["embedding_shapes"] == {(1, 1280)}
    tokens_per_token = tokens["link_bytes"] / tokens["tokens"]
    assert tokens_per_token < frame_bytes / 4, tokens  # a token message (with its float32 embedding)
    REPORTED.append(f"transport across emulated hosts: {raw_per_token / 1e3:.1f} KB on the robot's link per image "
                    f"token with raw frames, {tokens_per_token / 1e3:.1f} KB with tokens (mean frame "
                    f"{frame_bytes / 1e3:.1f} KB)")


def test_the_transport_command_advises_from_a_fleets_adverts(processes):
    namespace = f"advice_{uuid.uuid4().hex[:8]}"
    client = RosClient("advert_source", f"/{namespace}")
    try:
        publisher = client.node.create_publisher(ComputeAdvert, "adverts", ADVERTS)
        gib = 2**30
        robot = Advert("tb3_0", "robot", 4.0, 0.0, gib, gib, (Link("tb3_0", "edge_0", 0.020, 100e6),))
        edge = Advert("edge_0", "edge", 40.0, 0.0, gib, gib)
        command = processes.start(LIB / "edge-lam", "transport", "--adverts-topic", f"/{namespace}/adverts",
                                  "--wait", "60")

        def advised() -> bool:  # advertise as host agents do, until the command has its answer
            for advert in (robot, edge):
                publisher.publish(to_advert_msg(advert, time.time_ns()))
            return command.poll() is not None

        assert client.spin_until(advised, 90), "edge-lam transport did not end"
    finally:
        client.close()
    rc, output = finish(command)
    assert rc == 0, output
    assert "link 20.0 ms, 100.0 Mbit/s" in output
    assert "image: raw (" in output and "odometry: tokens (" in output  # a robot at 0.1x of the edge
    assert "camera_transport:=raw" in output and "camera_for_robot:=tb3_0" in output


def test_the_transport_command_says_when_no_fleet_advertises(processes):
    command = processes.start(LIB / "edge-lam", "transport", "--adverts-topic", f"/nobody_{uuid.uuid4().hex[:8]}",
                              "--wait", "1")
    rc, output = finish(command)
    assert rc == 1 and "no robot and edge adverts" in output and "heard: none" in output
