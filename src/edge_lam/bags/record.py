"""``edge-lam record``: writes topics of the graph to a rosbag2 bag (MCAP or sqlite3) with rosbags' Writer.

Messages are taken as raw CDR bytes (never deserialised) and stamped with their DDS receive time (ns, system
clock). Each topic's type comes from ``--type`` or from the graph (a bounded wait for a publisher). The bag stores
each type's full message definition (rosbag2 format 9), so rosbags and ROS tools read it without the packages:
standard types come from rosbags' Kilted typestore, others (edge_lam_msgs...) from the ``.msg`` files installed
with their package. The bag is closed properly however the recording ends: duration, count, SIGINT or SIGTERM.

QoS: the subscription is reliable unless a known publisher of the topic is best effort, and transient-local when
all known publishers are (so a latched /tf_static is recorded too); keep-all, since every message matters. With
``--type`` and no publisher up yet, it is reliable and volatile, and a best-effort publisher appearing later is not
matched. The publishers' QoS is stored in the bag as offered QoS, so a replay offers it again.
"""

from __future__ import annotations

import functools
import pathlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import rclpy
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import MessageInfo
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype
from rosbags.typesys.store import Typestore

from edge_lam.bags import StopFlag, bound_teardown, stop_requested
from edge_lam.bags.replay import message_class
from edge_lam.bags.schedule import BagError
from edge_lam.ros.spin import spin_until

__all__ = ["STORAGES", "RecordNode", "message_definitions", "parse_types", "record_bag"]

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# Messages DDS already took in when a stop is asked for are still written, for at most this long.
DRAIN_S = 2.0


def parse_types(pairs: Iterable[str]) -> dict[str, str]:
    """``["/topic=pkg/msg/Type", ...]`` as ``{"/topic": "pkg/msg/Type"}``."""
    types = {}
    for pair in pairs:
        topic, _, msgtype = pair.partition("=")
        if not topic or msgtype.count("/") != 2:
            raise BagError(f"--type '{pair}' is not of the form /topic=pkg/msg/Type")
        types[topic] = msgtype
    return types


def _named(field: tuple) -> Iterator[str]:
    """The message types a parsed field refers to (through arrays and sequences)."""
    kind, detail = field
    if kind == Nodetype.NAME:
        yield detail
    elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        yield from _named(detail[0])


def message_definitions(msgtypes: Iterable[str]) -> Typestore:
    """A typestore that knows ``msgtypes`` and every type they use, to give the Writer their definitions.

    Kilted's standard types come with rosbags; any other type is read from the ``.msg`` file its package installs
    (found through the ament index), and so are the types that file uses.
    """
    store = get_typestore(Stores.ROS2_KILTED)
    found: dict = {}
    pending = list(msgtypes)
    while pending:
        msgtype = pending.pop()
        if msgtype in store.fielddefs or msgtype in found:
            continue
        package, _, name = msgtype.split("/")
        try:
            text = (pathlib.Path(get_package_share_directory(package)) / "msg" / f"{name}.msg").read_text()
        except (PackageNotFoundError, OSError) as err:
            raise BagError(f"no message definition for {msgtype}: is its package installed? ({err})") from err
        parsed = get_types_from_msg(text, msgtype)
        found.update(parsed)
        pending.extend(ref for _, field in parsed[msgtype][1] for ref in _named(field))
    store.register(found)
    return store


def _bag_qos(profile: QoSProfile) -> Qos:
    """An rclpy QoS profile (as the graph reports a publisher's) in rosbags' terms, to store as offered QoS."""

    def seconds(duration) -> QosTime:
        return QosTime(*divmod(duration.nanoseconds, 1_000_000_000))

    return Qos(
        history=QosHistory[profile.history.name],
        depth=profile.depth,
        reliability=QosReliability[profile.reliability.name],
        durability=QosDurability[profile.durability.name],
        deadline=seconds(profile.deadline),
        lifespan=seconds(profile.lifespan),
        liveliness=QosLiveliness[profile.liveliness.name],
        liveliness_lease_duration=seconds(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=profile.avoid_ros_namespace_conventions,
    )


def _recording_qos(offered: Sequence[QoSProfile]) -> QoSProfile:
    best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in offered)
    latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class RecordNode(Node):
    """Finds the recorded topics' types and QoS in the graph, then writes every message they carry to a bag."""

    def __init__(self, limit: int | None, stop: StopFlag, node_name: str = "bag_record", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.recorded: Counter[str] = Counter()
        self._limit = limit
        self._stop = stop

    def resolve_types(self, topics: Sequence[str], given: dict[str, str], timeout_s: float) -> dict[str, str]:
        """Each topic's type: from ``given``, else from the graph, waiting up to ``timeout_s`` for a publisher."""
        types: dict[str, str | None] = {topic: given.get(topic) for topic in topics}
        deadline = time.monotonic() + timeout_s
        while missing := [t for t, msgtype in types.items() if msgtype is None]:
            graph = dict(self.get_topic_names_and_types())
            for topic in missing:
                if len(graph.get(topic, ())) > 1:
                    raise BagError(f"{topic} carries several types ({', '.join(graph[topic])}); pick one with --type")
                types[topic] = next(iter(graph.get(topic, ())), None)
            if time.monotonic() >= deadline or self._stop.wait(0.1):
                break
        if missing := [t for t, msgtype in types.items() if msgtype is None]:
            when = "before the stop" if self._stop.is_set() else f"within {timeout_s} s"
            raise BagError(f"no publisher of {', '.join(missing)} seen {when}; give its type with --type")
        return {topic: msgtype for topic, msgtype in types.items() if msgtype}

    def record(self, writer: Writer, types: dict[str, str], store: Typestore) -> None:
        """Subscribe to every topic, writing to ``writer``; after ``limit`` messages in all, set ``stop``."""
        for topic, msgtype in types.items():
            offered = [info.qos_profile for info in self.get_publishers_info_by_topic(topic)]
            connection = writer.add_connection(
                topic, msgtype, typestore=store, offered_qos_profiles=[_bag_qos(q) for q in offered]
            )
            callback = functools.partial(self.write, writer, connection)
            self.create_subscription(message_class(msgtype), topic, callback, _recording_qos(offered), raw=True)

    def write(self, writer: Writer, connection: Connection, data: bytes, info: MessageInfo) -> None:
        # One spin_once runs one callback, and the spin stops once ``stop`` is set: the limit is never overrun.
        writer.write(connection, info["received_timestamp"] or time.time_ns(), data)
        self.recorded[connection.topic] += 1
        if self._limit is not None and self.recorded.total() >= self._limit:
            self._stop.set()


def _drain(executor: SingleThreadedExecutor, node: RecordNode, limit: int | None) -> None:
    """Write what DDS already received when a stop came, until nothing more arrives (bounded by DRAIN_S)."""
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline and (limit is None or node.recorded.total() < limit):
        before = node.recorded.total()
        executor.spin_once(timeout_sec=0.05)
        if node.recorded.total() == before:
            return


def record_bag(
    output: str,
    *,
    topics: Sequence[str],
    types: Sequence[str] = (),
    storage: str = "mcap",
    duration_s: float | None = None,
    count: int | None = None,
    wait_timeout_s: float = 10.0,
    ros_args: Sequence[str] = (),
) -> int:
    """Record ``topics`` to a new bag at ``output`` (the ``edge-lam record`` command); print one summary line.
    ``ros_args``: a ``--ros-args`` section for the node (its name, namespace, remappings)."""
    path = pathlib.Path(output)
    given = parse_types(types)
    if path.exists():
        raise BagError(f"{path} exists already; the recording goes to a new folder")
    if storage not in STORAGES:
        raise BagError(f"storage '{storage}' is not one of {', '.join(STORAGES)}")
    if not topics:
        raise BagError("name at least one --topic to record")
    if (duration_s is not None and duration_s <= 0) or (count is not None and count < 1) or wait_timeout_s < 0:
        raise BagError(f"--duration must be > 0, --count >= 1, --wait-timeout >= 0 (got {duration_s}, {count})")
    # Only the --ros-args section goes to rcl: it would take any OLD:=NEW in sys.argv for a remapping of its own.
    with stop_requested() as stop, rclpy.init(args=["edge-lam", *ros_args],
                                              signal_handler_options=SignalHandlerOptions.NO):
        node = RecordNode(count, stop)
        names = list(dict.fromkeys(node.resolve_topic_name(t) for t in topics))
        given = {node.resolve_topic_name(t): msgtype for t, msgtype in given.items()}
        resolved = node.resolve_types(names, given, wait_timeout_s)
        if unimportable := [f"{t} ({m})" for t, m in resolved.items() if message_class(m) is None]:
            raise BagError(f"message type not installed here: {', '.join(unimportable)}")
        store = message_definitions(set(resolved.values()))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage]) as writer:
            node.record(writer, resolved, store)
            started = time.monotonic()
            # A stop (a signal, or the count reached) ends the recording within a spin of 0.1 s.
            spin_until(executor, stop.is_set, duration_s or float("inf"), period_s=0.1)
            _drain(executor, node, count)
            elapsed_s = time.monotonic() - started
        per_topic = ", ".join(f"{t} {node.recorded[t]}" for t in names)
        print(f"recorded {node.recorded.total()} messages in {elapsed_s:.2f} s ({per_topic}) to {path}", flush=True)
        bound_teardown()
    return 0
