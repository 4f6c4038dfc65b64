"""A ROS 1 bag read as if it were a rosbag2 one: ROS 2 type names, CDR bytes, QoS from latching.

Real robot data is often ROS 1 bags. rosbags reads them and converts their messages as ``rosbags-convert`` does:
the bag's own message definitions, with ROS 2's Header (ROS 1's has a ``seq``, ROS 2's none) and ROS 2's names for
renamed types (tf/tfMessage is tf2_msgs/TFMessage); a message whose wire format is otherwise the same is converted
byte-wise (``ros1_to_cdr``), any other is migrated field by field. A latched topic is offered transient-local, as
rosbags-convert writes it. ``ReplayPlan`` uses this reader for ``.bag`` files.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Collection, Iterator

from rosbags.convert.converter import LATCH, STATIC_MSGTYPE_RENAMES, generate_message_converter
from rosbags.interfaces import Connection, ConnectionExtRosbag1, ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag1 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

__all__ = ["Ros1Bag"]


class Ros1Bag:
    """The subset of rosbag2's Reader a replay plan uses, over a ROS 1 bag; messages come out as CDR."""

    def __init__(self, path: pathlib.Path) -> None:
        self._reader = Reader(path)

    def open(self) -> None:
        self._reader.open()
        try:
            self._convert()
        except BaseException:
            self._reader.close()
            raise

    def _convert(self) -> None:
        source = get_typestore(Stores.EMPTY)
        for connection in self._reader.connections:
            if connection.msgdef.format == MessageDefinitionFormat.MSG:
                source.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
        target = get_typestore(Stores.EMPTY)
        header = get_typestore(Stores.ROS2_KILTED).fielddefs["std_msgs/msg/Header"]
        target.register({**source.fielddefs, "std_msgs/msg/Header": header})
        cache: dict[str, object] = {}
        self._converters: dict[str, Callable[[bytes | memoryview], memoryview]] = {}
        self._originals: dict[int, Connection] = {}
        self.connections: list[Connection] = []
        for connection in self._reader.connections:
            msgtype = STATIC_MSGTYPE_RENAMES.get(connection.msgtype, connection.msgtype)
            if msgtype not in target.fielddefs:
                types = get_types_from_msg(source.generate_msgdef(connection.msgtype, ros_version=2)[0], msgtype)
                types.pop("std_msgs/msg/Header", None)
                target.register(types)
            if msgtype not in self._converters:
                self._converters[msgtype] = generate_message_converter(
                    source, target, connection.msgtype, msgtype, cache, src_is2=False, dst_is2=True)
            latched = isinstance(connection.ext, ConnectionExtRosbag1) and bool(connection.ext.latching)
            converted = connection._replace(msgtype=msgtype, ext=ConnectionExtRosbag2("cdr", LATCH if latched else []))
            self._originals[converted.id] = connection
            self.connections.append(converted)

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    @property
    def start_time(self) -> int:
        return self._reader.start_time

    @property
    def end_time(self) -> int:
        return self._reader.end_time

    def messages(self, connections: Collection[Connection] = (), start: int | None = None, stop: int | None = None
                 ) -> Iterator[tuple[Connection, int, bytes]]:
        """The messages of ``connections`` (this reader's) in time order, as CDR."""
        wanted = {c.id: c for c in connections or self.connections}
        originals = [self._originals[i] for i in wanted]
        for original, timestamp, data in self._reader.messages(originals, start=start, stop=stop):
            connection = wanted[original.id]
            yield connection, timestamp, bytes(self._converters[connection.msgtype](data))

    def close(self) -> None:
        self._reader.close()
