"""``edge-lam replay BAG``: publishes a bag's messages into the graph with the bag's timing (a rosbag2 bag, or a ROS
1 bag converted to ROS 2 messages by ``bags.ros1``).

The bytes go out exactly as recorded (rclpy publishes ``bytes`` with ``publish_raw``), so nothing is deserialised
and a message replays byte for byte. Each message is sent when it is due against a monotonic clock; how late it
went out (the lag) is summarised at the end.

QoS per topic: the reliability and durability the bag recorded as offered (when all its recorded publishers
agree), else reliable and volatile. History is keep-last: a transient-local topic keeps its recorded depth, so a
late joiner gets what it would have got from the original publisher (the last /tf_static, not a hundred); other
topics get ``qos_depth`` or the recorded depth, whichever is larger, so a sped-up replay's bursts are queued rather
than dropped. Keep-all if the bag says keep-all. Deadline, lifespan and liveliness are left at their defaults.
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import rclpy
from rclpy.duration import Duration
from rclpy.exceptions import InvalidTopicNameException
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosbags.interfaces import Qos

from edge_lam.bags import StopFlag, bound_teardown, stop_requested
from edge_lam.bags.schedule import BagError, LagHistogram, PlannedTopic, ReplayPlan, Scheduled, parse_remaps

__all__ = ["ReplayNode", "ReplayReport", "message_class", "replay_bag", "replay_qos"]

# A publisher counts a subscriber once it has matched the subscriber's reader, but that reader matches the
# publisher a little later (seen: 25 ms here), and a volatile reader drops whatever arrives before: so the replay
# starts this long after the subscribers are seen.
MATCH_SETTLE_S = 0.5


def message_class(msgtype: str) -> type | None:
    """The ROS 2 Python class of ``pkg/msg/Type`` (``pkg.msg.Type``), or None when it cannot be imported here."""
    package, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(package.replace("/", ".")), name)
    except (ImportError, AttributeError, ValueError):
        return None


def replay_qos(offered: Sequence[Qos], depth: int) -> QoSProfile:
    """The publisher QoS for a topic the bag recorded with ``offered`` profiles (see the module's docstring)."""

    def agreed(values: set[str], allowed: tuple[str, ...], default: str) -> str:
        return values.pop() if len(values) == 1 and values <= set(allowed) else default

    reliability = agreed({q.reliability.name for q in offered}, ("RELIABLE", "BEST_EFFORT"), "RELIABLE")
    durability = agreed({q.durability.name for q in offered}, ("TRANSIENT_LOCAL", "VOLATILE"), "VOLATILE")
    profile = QoSProfile(
        depth=depth,
        reliability=ReliabilityPolicy[reliability],
        durability=DurabilityPolicy[durability],
    )
    recorded_depths = [q.depth for q in offered if q.history.name == "KEEP_LAST" and q.depth > 0]
    if offered and all(q.history.name == "KEEP_ALL" for q in offered):
        profile.history = HistoryPolicy.KEEP_ALL
    elif durability == "TRANSIENT_LOCAL" and recorded_depths:
        profile.depth = max(recorded_depths)
    else:
        profile.depth = max([depth, *recorded_depths])
    return profile


@dataclass
class ReplayReport:
    """What a replay did: messages per output topic, how long it ran, how late messages went out."""

    published: Counter[str] = field(default_factory=Counter)
    lag: LagHistogram = field(default_factory=LagHistogram)
    duration_s: float = 0.0
    interrupted: bool = False

    def summary(self) -> str:
        per_topic = ", ".join(f"{topic} {n}" for topic, n in sorted(self.published.items())) or "none"
        return (
            f"replayed {self.published.total()} messages in {self.duration_s:.2f} s ({per_topic}); "
            f"lag p50 {self.lag.percentile(50):.3f} ms, p99 {self.lag.percentile(99):.3f} ms, "
            f"worst {self.lag.worst_ms:.3f} ms" + ("; interrupted" if self.interrupted else "")
        )


class ReplayNode(Node):
    """One publisher per replayable topic of a plan; ``play`` sends each message when it is due."""

    def __init__(self, topics: Iterable[PlannedTopic], qos_depth: int, node_name: str = "bag_replay", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.skipped: list[PlannedTopic] = []
        self._outputs: dict[str, Publisher] = {}
        self.misnamed: list[PlannedTopic] = []  # ROS 1 allows topic names ROS 2 refuses (S-PTAM)
        for topic in topics:
            cls = message_class(topic.msgtype)
            if cls is None:
                self.skipped.append(topic)
                continue
            qos = replay_qos(topic.offered_qos, qos_depth)
            try:
                self._outputs[topic.topic] = self.create_publisher(cls, topic.topic, qos)
            except InvalidTopicNameException:
                self.misnamed.append(topic)

    @property
    def topics(self) -> list[str]:
        return list(self._outputs)

    def wait_for_subscribers(self, count: int, timeout_s: float, stop: StopFlag) -> list[str]:
        """Wait until every topic has ``count`` subscribers (then MATCH_SETTLE_S more), or the time-out; return the
        topics still short."""
        deadline = time.monotonic() + timeout_s
        while short := [t for t, pub in self._outputs.items() if pub.get_subscription_count() < count]:
            if time.monotonic() >= deadline or stop.wait(0.05):
                return short
        stop.wait(MATCH_SETTLE_S)
        return []

    def play(self, messages: Iterable[Scheduled], stop: StopFlag) -> ReplayReport:
        """Publish every message at its due time (seconds after this call) until the plan or ``stop`` ends."""
        report = ReplayReport()
        start = time.monotonic()
        for message in messages:
            publisher = self._outputs.get(message.topic)
            if publisher is None:
                continue
            delay_s = message.due_s - (time.monotonic() - start)
            if (delay_s > 0 and stop.wait(delay_s)) or stop.is_set():
                report.interrupted = True
                break
            report.lag.add(max(0.0, (time.monotonic() - start - message.due_s) * 1e3))
            publisher.publish(message.data)
            report.published[message.topic] += 1
        report.duration_s = time.monotonic() - start
        return report

    def wait_for_delivery(self, timeout_s: float) -> list[str]:
        """Wait until reliable subscribers have acknowledged everything; return the topics not done in time."""
        deadline = time.monotonic() + timeout_s
        return [
            topic
            for topic, publisher in self._outputs.items()
            if publisher.qos_profile.reliability == ReliabilityPolicy.RELIABLE
            and not publisher.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
        ]


def replay_bag(
    bag: str,
    *,
    topics: Sequence[str] = (),
    remap: Sequence[str] = (),
    start_offset_s: float = 0.0,
    duration_s: float | None = None,
    rate: float = 1.0,
    loop: bool = False,
    qos_depth: int = 100,
    wait_subscribers: int = 0,
    wait_timeout_s: float = 10.0,
    ros_args: Sequence[str] = (),
) -> int:
    """Replay ``bag`` (the ``edge-lam replay`` command); print one summary line. Raises BagError on bad input.
    ``ros_args``: a ``--ros-args`` section for the node (its name, e.g. ``-r __node:=camera_replay``)."""
    if qos_depth < 1 or wait_subscribers < 0 or wait_timeout_s < 0:
        raise BagError(
            f"--qos-depth must be >= 1, --wait-subscribers and --wait-timeout >= 0 "
            f"(got {qos_depth}, {wait_subscribers}, {wait_timeout_s})"
        )
    plan = ReplayPlan(
        bag, topics=topics, remap=parse_remaps(remap), start_offset_s=start_offset_s, duration_s=duration_s,
        rate=rate, loop=loop,
    )
    # Only the --ros-args section goes to rcl: it would read the --remap OLD:=NEW in sys.argv as a remapping of its own.
    with plan, stop_requested() as stop, rclpy.init(args=["edge-lam", *ros_args],
                                                    signal_handler_options=SignalHandlerOptions.NO):
        node = ReplayNode(plan.topics, qos_depth)
        log = node.get_logger()
        if node.skipped:
            log.warning(
                "skipping topics whose message type is not installed here: "
                + ", ".join(f"{t.source} ({t.msgtype})" for t in node.skipped)
            )
        if node.misnamed:
            log.warning(
                "skipping topics whose names are not valid ROS 2 names (--remap them to valid ones): "
                + ", ".join(t.topic for t in node.misnamed)
            )
        if not node.topics:
            raise BagError("no replayable topic left: none of the selected topics' types can be imported")
        if wait_subscribers and (short := node.wait_for_subscribers(wait_subscribers, wait_timeout_s, stop)):
            log.warning(f"starting without {wait_subscribers} subscriber(s) on {', '.join(short)}")
        report = node.play(plan, stop)
        if not report.interrupted and (undelivered := node.wait_for_delivery(wait_timeout_s)):
            log.warning(f"not every message was acknowledged within {wait_timeout_s} s on {', '.join(undelivered)}")
        print(report.summary(), flush=True)
        bound_teardown()
    return 0
