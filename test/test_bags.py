"""Bag replay and recording: the pure plan on the real evo bags, and round trips through Fast DDS between processes.

The nav2 bag is 97 s long, so its /odom (2639 messages, 27 Hz) goes through ROS at --rate 8 (12 s); a sqlite3 copy
of its first 20 s of /odom at --rate 10, looped twice.
"""

from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from collections import Counter

import pytest
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosReliability
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from conftest import REPORTED, finish
from edge_lam.assets.cache import evo_bags_dir
from edge_lam.bags.record import message_definitions, parse_types
from edge_lam.bags.replay import message_class, replay_qos
from edge_lam.bags.schedule import BagError, LagHistogram, ReplayPlan, parse_remaps
from ros_client import RosClient

EVO = evo_bags_dir()
NAV2 = EVO / "nav2_turtlebot.mcap"
TF_EXAMPLE = EVO / "tf_example"
ROS1_EXAMPLE = EVO / "ROS_example.bag"  # ROS 1: PoseStamped of a ground truth and two SLAM runs (one named S-PTAM)
NAV2_COUNTS = {"/odom": 2639, "/tf": 5422, "/tf_static": 1, "/amcl_pose": 135}


def recorded(bag, topics=None) -> list[tuple[str, int, bytes]]:
    """(topic, time ns, raw bytes) of a bag's messages in bag order, read with rosbags' AnyReader."""
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        return [(c.topic, t, bytes(data)) for c, t, data in reader.messages(connections=connections)]


def bag_start_ns(bag) -> int:
    with AnyReader([bag]) as reader:
        return reader.start_time


def serialized(store, msgtype: str, **fields) -> bytes:
    return bytes(store.serialize_cdr(store.types[msgtype](**fields), msgtype))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_lam.cli", *args]


# --- the plan, pure ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bag", [NAV2, TF_EXAMPLE], ids=["mcap", "sqlite3"])
def test_plan_yields_every_message_in_bag_order_at_its_recorded_offset(bag):
    expected = recorded(bag)
    start_ns = bag_start_ns(bag)
    with ReplayPlan(bag) as plan:
        planned = list(plan)
        assert {t.source: t.count for t in plan.topics} == Counter(topic for topic, _, _ in expected)
    assert [(m.topic, m.data) for m in planned] == [(topic, data) for topic, _, data in expected]
    assert [m.due_s for m in planned] == [(t - start_ns) / 1e9 for _, t, _ in expected]
    if bag == NAV2:
        assert Counter(m.topic for m in planned) == NAV2_COUNTS
        assert {m.msgtype for m in planned if m.topic == "/odom"} == {"nav_msgs/msg/Odometry"}


def test_plan_selects_and_remaps_topics():
    with ReplayPlan(NAV2, topics=["/odom", "/amcl_pose"], remap=parse_remaps(["/odom:=/robot1/odom"])) as plan:
        assert [(t.source, t.topic) for t in plan.topics] == [("/odom", "/robot1/odom"), ("/amcl_pose", "/amcl_pose")]
        planned = list(plan)
    assert Counter(m.topic for m in planned) == {"/robot1/odom": 2639, "/amcl_pose": 135}
    expected = recorded(NAV2, {"/odom", "/amcl_pose"})
    assert [m.data for m in planned] == [data for _, _, data in expected]
    assert {m.msgtype for m in planned if m.topic == "/robot1/odom"} == {"nav_msgs/msg/Odometry"}


def test_start_offset_skips_the_beginning_and_rate_scales_due_times():
    offset_s = 60.0
    start_ns = bag_start_ns(NAV2) + int(offset_s * 1e9)
    expected = [(t, data) for _, t, data in recorded(NAV2, {"/odom"}) if t >= start_ns]
    with ReplayPlan(NAV2, topics=["/odom"], start_offset_s=offset_s) as plan:
        real_time = list(plan)
    with ReplayPlan(NAV2, topics=["/odom"], start_offset_s=offset_s, rate=4.0) as plan:
        fast = list(plan)
    assert 0 < len(real_time) < 2639
    assert [m.data for m in real_time] == [data for _, data in expected]
    assert [m.due_s for m in real_time] == [(t - start_ns) / 1e9 for t, _ in expected]
    assert [m.data for m in fast] == [m.data for m in real_time]
    assert all(math.isclose(f.due_s * 4, r.due_s, abs_tol=1e-9) for f, r in zip(fast, real_time, strict=True))
    assert real_time[-1].due_s > 37 and fast[-1].due_s < 10


def test_duration_plays_only_that_slice_and_loops_over_it():
    start_ns = bag_start_ns(NAV2) + int(30e9)
    expected = [data for _, t, data in recorded(NAV2, {"/odom"}) if start_ns <= t < start_ns + int(5e9)]
    with ReplayPlan(NAV2, topics=["/odom"], start_offset_s=30.0, duration_s=5.0) as plan:
        played = list(plan)
    with ReplayPlan(NAV2, topics=["/odom"], start_offset_s=30.0, duration_s=5.0, loop=True) as plan:
        looped = list(itertools.islice(plan, 2 * len(expected)))
        pass_s = plan.pass_s
    assert 100 < len(played) < 200 and [m.data for m in played] == expected
    assert played[-1].due_s < 5.0 and pass_s == 5.0
    assert [m.data for m in looped] == expected * 2 and looped[len(expected)].due_s >= 5.0


def test_loop_yields_the_bag_again_one_pass_later():
    with ReplayPlan(TF_EXAMPLE, topics=["/tf"], rate=2.0, loop=True) as plan:
        two_passes = list(itertools.islice(plan, 2 * 517 + 1))
        pass_s = plan.pass_s
    first, second = two_passes[:517], two_passes[517 : 2 * 517]
    assert math.isclose(pass_s, 51.684723335 / 2, abs_tol=1e-6)
    assert [m.data for m in second] == [m.data for m in first]
    assert all(math.isclose(b.due_s, a.due_s + pass_s, abs_tol=1e-9) for a, b in zip(first, second, strict=True))
    assert two_passes[-1].data == first[0].data and two_passes[-1].due_s > second[-1].due_s


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"topics": ["/odom", "/nope"]}, r"/nope not in .*nav2_turtlebot.mcap; it has /amcl_pose, /odom, /tf"),
        ({"rate": 0.0}, "rate must be a number > 0"),
        ({"rate": -2.0}, "rate must be a number > 0"),
        ({"rate": math.nan}, "rate must be a number > 0"),
        ({"start_offset_s": 98.0}, r"start offset 98.0 s is beyond the end of .* \(97.355 s\)"),
        ({"start_offset_s": -1.0}, "start offset must be >= 0"),
        ({"duration_s": 0.0}, "duration must be > 0"),
        ({"topics": ["/tf_static"], "start_offset_s": 1.0}, "no message of /tf_static at or after 1.0 s"),
        ({"topics": ["/odom"], "remap": {"/tf": "/x"}}, "remap of /tf: not a replayed topic"),
        ({"remap": {"/odom": "/tf"}}, "several bag topics would be published on /tf"),
    ],
)
def test_bad_replay_arguments_are_refused_clearly(kwargs, error):
    with pytest.raises(BagError, match=error):
        ReplayPlan(NAV2, **kwargs)


def test_missing_and_unreadable_bags_are_refused_clearly(tmp_path):
    with pytest.raises(BagError, match=r"no bag at .*nowhere\.mcap"):
        ReplayPlan(tmp_path / "nowhere.mcap")
    (tmp_path / "broken.bag").write_bytes(b"#ROSBAG V2.0\nnot a bag")
    with pytest.raises(BagError, match="not a readable ROS 1 bag"):
        ReplayPlan(tmp_path / "broken.bag")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match=r"not a readable rosbag2 bag .*metadata\.yaml"):
        ReplayPlan(tmp_path / "empty")
    with pytest.raises(BagError, match="not of the form /old:=/new"):
        parse_remaps(["/odom=/x"])
    with pytest.raises(BagError, match="not of the form /topic=pkg/msg/Type"):
        parse_types(["/odom=Odometry"])


def test_a_ros1_bag_plans_ros2_messages_converted_from_its_own(tmp_path):
    """evo's ROS 1 bags: ROS 2 type names (tf/tfMessage's successor too), CDR that ROS 2's types read, ROS 1's
    Header seq gone, the bag's timing kept."""
    store = get_typestore(Stores.ROS2_KILTED)
    with ReplayPlan(EVO / "tf_example.bag") as plan:
        assert [(t.source, t.msgtype) for t in plan.topics] == [("/tf", "tf2_msgs/msg/TFMessage"),
                                                                ("/tf_static", "tf2_msgs/msg/TFMessage")]
        first = next(iter(plan))
    with AnyReader([EVO / "tf_example.bag"]) as reader:
        connection, _, data = next(reader.messages())
        original = reader.deserialize(data, connection.msgtype)
    converted = store.deserialize_cdr(first.data, first.msgtype)
    assert (first.topic, first.due_s) == (connection.topic, 0.0)
    (got,), (want,) = converted.transforms, original.transforms
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id, got.child_frame_id) == (
        want.header.stamp.sec, want.header.stamp.nanosec, want.header.frame_id, want.child_frame_id)
    assert got.transform.rotation.w == want.transform.rotation.w
    with ReplayPlan(ROS1_EXAMPLE, topics=["groundtruth"], start_offset_s=10.0, duration_s=5.0) as plan:
        due = [m.due_s for m in plan]
    assert len(due) == sum(1 for _ in recorded_between(ROS1_EXAMPLE, "groundtruth", 10.0, 15.0))
    assert 0 <= due[0] < due[-1] < 5.0


def recorded_between(bag, topic: str, start_s: float, stop_s: float):
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        start = reader.start_time + int(start_s * 1e9)
        yield from reader.messages(connections=connections, start=start, stop=reader.start_time + int(stop_s * 1e9))


def test_loop_over_a_single_instant_and_an_empty_bag_are_refused(tmp_path):
    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(tmp_path / "one", version=9) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        writer.write(connection, 1_000, serialized(store, "std_msgs/msg/String", data="hi"))
    with ReplayPlan(tmp_path / "one") as plan:
        assert [(m.due_s, m.topic) for m in plan] == [(0.0, "/chatter")]
    with pytest.raises(BagError, match="loop needs messages spread over time"):
        ReplayPlan(tmp_path / "one", loop=True)
    with Writer(tmp_path / "empty", version=9) as writer:
        writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
    with pytest.raises(BagError, match="empty holds no messages"):
        ReplayPlan(tmp_path / "empty")


def test_lag_histogram_percentiles_are_within_one_bin():
    lags = LagHistogram()
    for lag_ms in [0.1] * 980 + [2.0] * 15 + [50.0] * 4 + [700.0]:
        lags.add(lag_ms)
    assert lags.count == 1000 and lags.worst_ms == 700.0
    assert 0.1 <= lags.percentile(50) <= 0.1 * 1.02
    assert 2.0 <= lags.percentile(99) <= 2.0 * 1.02
    assert 50.0 <= lags.percentile(99.9) <= 50 * 1.02
    assert lags.percentile(100) == 700.0
    assert LagHistogram().percentile(50) == 0.0


# --- the ROS side, in this process -------------------------------------------------------------------------------


def test_replay_qos_follows_what_the_bag_recorded():
    with ReplayPlan(NAV2) as plan:
        offered = {t.source: t.offered_qos for t in plan.topics}
    odom = replay_qos(offered["/odom"], depth=100)  # recorded: reliable, volatile, keep-last 10
    assert (odom.reliability, odom.durability, odom.history, odom.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, HistoryPolicy.KEEP_LAST, 100)
    assert replay_qos(offered["/odom"], depth=5).depth == 10
    latched = replay_qos(offered["/tf_static"], depth=100)  # recorded: transient-local, depth 1
    assert (latched.durability, latched.depth) == (DurabilityPolicy.TRANSIENT_LOCAL, 1)
    best_effort = replay_qos([offered["/odom"][0]._replace(reliability=QosReliability.BEST_EFFORT)], depth=7)
    assert (best_effort.reliability, best_effort.depth) == (ReliabilityPolicy.BEST_EFFORT, 10)
    unknown = replay_qos([], depth=7)  # tf_example recorded no QoS
    assert (unknown.reliability, unknown.durability, unknown.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 7)


def test_message_classes_and_definitions_come_from_what_is_installed():
    assert message_class("nav_msgs/msg/Odometry") is Odometry
    assert message_class("no_such_msgs/msg/Thing") is None
    assert message_class("nav_msgs/msg/NoSuchType") is None
    store = message_definitions(["edge_lam_msgs/msg/TensorList", "nav_msgs/msg/Odometry"])
    definition, _ = store.generate_msgdef("edge_lam_msgs/msg/TensorList", ros_version=2)
    assert "MSG: edge_lam_msgs/Tensor" in definition and "MSG: std_msgs/Header" in definition
    with pytest.raises(BagError, match="no message definition for no_such_msgs/msg/Thing"):
        message_definitions(["no_such_msgs/msg/Thing"])


# --- through ROS, between processes ------------------------------------------------------------------------------


def test_a_ros1_bag_replays_as_ros2_messages_under_the_node_name_given(processes):
    """ROS 1 names a ROS 2 topic cannot have (S-PTAM) are skipped with a warning; --ros-args names the node."""
    client = RosClient("ros1_replay_test")
    try:
        got = client.collect(PoseStamped, "/ros1_test/groundtruth", QoSProfile(depth=2000))
        replay = processes.start(*cli("replay", str(ROS1_EXAMPLE), "--topics", "groundtruth", "S-PTAM", "--remap",
                                      "groundtruth:=/ros1_test/groundtruth", "--duration", "30", "--rate", "10",
                                      "--wait-subscribers", "1", "--ros-args", "-r", "__node:=ros1_replay"))
        assert client.spin_until(lambda: "ros1_replay" in client.node.get_node_names() or replay.poll() is not None,
                                 30), "no node named ros1_replay"
        assert client.spin_until(lambda: replay.poll() is not None, 60)
        client.spin_for(0.5)
    finally:
        client.close()
    rc, output = finish(replay, 5)
    assert rc == 0, output
    assert "skipping topics whose names are not valid ROS 2 names (--remap them to valid ones): S-PTAM" in output
    expected = list(recorded_between(ROS1_EXAMPLE, "groundtruth", 0.0, 30.0))
    assert f"replayed {len(expected)} messages" in summary(output, "replayed"), output
    assert len(got) == len(expected) > 20
    with AnyReader([ROS1_EXAMPLE]) as reader:
        connection, _, data = expected[-1]
        last = reader.deserialize(data, connection.msgtype)
    assert (got[-1].header.frame_id, got[-1].header.stamp.sec, got[-1].pose.position.x) == (
        last.header.frame_id, last.header.stamp.sec, last.pose.position.x)


def summary(output: str, prefix: str) -> str:
    return next((line for line in output.splitlines() if line.startswith(prefix)), f"no '{prefix}' line")


def test_mcap_round_trip_is_byte_identical_and_keeps_the_timing(processes, tmp_path):
    """Replay /odom (remapped), record it with its type found in the graph; the recording ends with SIGINT."""
    out = tmp_path / "odom_bag"
    wall_start_ns = time.time_ns()
    replay = processes.start(*cli("replay", str(NAV2), "--topics", "/odom", "--remap", "/odom:=/test_bags/odom",
                                  "--rate", "8", "--wait-subscribers", "1", "--wait-timeout", "20"))
    record = processes.start(*cli("record", "--output", str(out), "--topic", "/test_bags/odom", "--wait-timeout", "20"))
    replay_rc, replay_out = finish(replay, timeout_s=45)
    record.send_signal(signal.SIGINT)
    record_rc, record_out = finish(record, timeout_s=15)
    logs = f"replay rc={replay_rc}:\n{replay_out}\nrecord rc={record_rc}:\n{record_out}"
    assert (replay_rc, record_rc) == (0, 0), logs
    assert "replayed 2639 messages" in summary(replay_out, "replayed"), logs
    assert "recorded 2639 messages" in summary(record_out, "recorded"), logs

    original = recorded(NAV2, {"/odom"})
    copy = recorded(out)
    assert [data for _, _, data in copy] == [data for _, _, data in original]
    assert {topic for topic, _, _ in copy} == {"/test_bags/odom"}
    stamps = [t for _, t, _ in copy]
    assert wall_start_ns < stamps[0] and stamps[-1] < time.time_ns()
    span_s, bag_span_s = (stamps[-1] - stamps[0]) / 1e9, (original[-1][1] - original[0][1]) / 1e9
    assert 0.8 < span_s / (bag_span_s / 8) < 1.25, f"recorded span {span_s:.2f} s for {bag_span_s / 8:.2f} s of bag"
    with AnyReader([out]) as reader, AnyReader([NAV2]) as source:  # the stored definition deserialises the bytes
        (connection,) = reader.connections
        first = reader.deserialize(next(reader.messages())[2], connection.msgtype)
        odom = next(c for c in source.connections if c.topic == "/odom")
        expected = source.deserialize(next(source.messages(connections=[odom]))[2], odom.msgtype)
    assert connection.msgtype == "nav_msgs/msg/Odometry"
    assert (first.header.frame_id, first.child_frame_id, first.pose.pose.position.x) == (
        expected.header.frame_id, expected.child_frame_id, expected.pose.pose.position.x)
    assert connection.ext.offered_qos_profiles[0].reliability.name == "RELIABLE"
    REPORTED.append(f"replay of nav2 /odom at --rate 8: {summary(replay_out, 'replayed')}")


def odom_as_sqlite3(folder, seconds: float):
    """The first ``seconds`` of nav2's /odom copied byte for byte into a sqlite3 bag (with its definition and QoS).

    tf_example, the real sqlite3 bag, carries only tf2_msgs types, and no tf2_msgs wheel exists to publish them.
    """
    with AnyReader([NAV2]) as reader, Writer(folder, version=9) as writer:
        odom = next(c for c in reader.connections if c.topic == "/odom")
        copy = writer.add_connection("/odom", odom.msgtype, typestore=get_typestore(Stores.ROS2_KILTED),
                                     offered_qos_profiles=odom.ext.offered_qos_profiles)
        stop_ns = reader.start_time + int(seconds * 1e9)
        for _, timestamp, data in reader.messages(connections=[odom], stop=stop_ns):
            writer.write(copy, timestamp, data)
    return recorded(folder)


def test_sqlite3_round_trip_of_a_looped_bag_stops_on_count_and_on_ctrl_c(processes, tmp_path):
    """Record (type given, sqlite3, two passes by --count) first; then replay a sqlite3 bag looped until SIGINT."""
    one_pass = [data for _, _, data in odom_as_sqlite3(tmp_path / "odom_sqlite3", seconds=20)]
    out = tmp_path / "copy"
    record = processes.start(*cli("record", "--output", str(out), "--storage", "sqlite3", "--topic", "/test_bags/odom",
                                  "--type", "/test_bags/odom=nav_msgs/msg/Odometry", "--count", str(2 * len(one_pass))))
    replay = processes.start(*cli("replay", str(tmp_path / "odom_sqlite3"), "--remap", "/odom:=/test_bags/odom",
                                  "--rate", "10", "--loop", "--wait-subscribers", "1", "--wait-timeout", "20"))
    record_rc, record_out = finish(record, timeout_s=40)
    replay_running = replay.poll() is None
    replay.send_signal(signal.SIGINT)
    replay_rc, replay_out = finish(replay, timeout_s=15)
    logs = f"replay rc={replay_rc}:\n{replay_out}\nrecord rc={record_rc}:\n{record_out}"
    assert replay_running, logs
    assert (record_rc, replay_rc) == (0, 0), logs
    assert f"recorded {2 * len(one_pass)} messages" in summary(record_out, "recorded"), logs
    assert summary(replay_out, "replayed").endswith("; interrupted"), logs
    assert (out / "metadata.yaml").is_file() and list(out.glob("*.db3"))
    assert [data for _, _, data in recorded(out)] == one_pass + one_pass


def test_replay_skips_types_not_installed_here_with_one_warning(processes, tmp_path):
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("string name\n", "fake_msgs/msg/Thing"))
    with Writer(tmp_path / "mixed", version=9) as writer:
        fake = writer.add_connection("/fake", "fake_msgs/msg/Thing", typestore=store)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for i in range(3):
            writer.write(fake, 1_000 + i, serialized(store, "fake_msgs/msg/Thing", name="x"))
            writer.write(chatter, 1_000 + i, serialized(store, "std_msgs/msg/String", data="hi"))
    rc, output = finish(processes.start(*cli("replay", str(tmp_path / "mixed"))), timeout_s=30)
    assert rc == 0, output
    assert output.count("skipping topics whose message type is not installed here: /fake (fake_msgs/msg/Thing)") == 1
    assert "replayed 3 messages" in summary(output, "replayed") and "/chatter 3" in output, output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("replay", "/nowhere/missing.mcap"), "edge-lam replay: error: no bag at /nowhere/missing.mcap"),
        (("replay", str(NAV2), "--topics", "/odom", "/nope"), "edge-lam replay: error: topic(s) /nope not in"),
        (("replay", str(NAV2), "--rate", "0"), "edge-lam replay: error: rate must be a number > 0, got 0.0"),
        (("record", "--output", str(EVO), "--topic", "/odom"), "edge-lam record: error: " + str(EVO) + " exists"),
        (("record", "--output", "{tmp}/bag", "--topic", "/odom", "--type", "/odom=nav_msgs/msg/Nope"),
         "edge-lam record: error: message type not installed here: /odom (nav_msgs/msg/Nope)"),
    ],
    ids=["missing-bag", "unknown-topic", "zero-rate", "existing-output", "unknown-type"],
)
def test_commands_refuse_bad_input_with_a_clear_message(processes, tmp_path, args, error):
    rc, output = finish(processes.start(*cli(*(a.format(tmp=tmp_path) for a in args))), timeout_s=30)
    assert rc == 2 and error in output, output
    assert not (tmp_path / "bag").exists()
