"""The replay plan of a bag (rosbag2, or ROS 1 converted by ``bags.ros1``): which messages go out, on which topic, and
when.

Pure (rosbags in, tuples out, no rclpy) so the timing rules are testable without a graph; ``replay`` publishes what
a plan yields. Messages are read lazily from the open bag, one at a time, so a bag of any size replays in constant
memory, and a loop reads the bag again instead of keeping a pass in memory.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Self

from rosbags.interfaces import Connection, ConnectionExtRosbag2, Qos
from rosbags.rosbag1 import ReaderError as Ros1ReaderError
from rosbags.rosbag2 import Reader, ReaderError

from edge_lam.bags.ros1 import Ros1Bag

__all__ = ["BagError", "LagHistogram", "PlannedTopic", "ReplayPlan", "Scheduled", "parse_remaps"]


class BagError(ValueError):
    """A bag or a replay argument that cannot work, said in words a user can act on."""


class Scheduled(NamedTuple):
    """One message of the plan: publish ``data`` (CDR, as recorded) on ``topic`` ``due_s`` after replay start."""

    due_s: float
    topic: str
    msgtype: str
    data: bytes


@dataclass(frozen=True)
class PlannedTopic:
    """A bag topic in the plan: where it goes out, its type, its message count in the bag, its recorded QoS."""

    source: str
    topic: str
    msgtype: str
    count: int
    offered_qos: tuple[Qos, ...]


def parse_remaps(remaps: Iterable[str]) -> dict[str, str]:
    """``["/old:=/new", ...]`` (the ROS remapping syntax) as ``{"/old": "/new"}``."""
    parsed: dict[str, str] = {}
    for remap in remaps:
        old, sep, new = remap.partition(":=")
        if not sep or not old or not new:
            raise BagError(f"remap '{remap}' is not of the form /old:=/new")
        if old in parsed:
            raise BagError(f"{old} is remapped twice")
        parsed[old] = new
    return parsed


class ReplayPlan:
    """An open bag and the rules to replay it; iterate it (or call ``messages``) for the Scheduled messages.

    Due times are ``(recorded time - (bag start + start_offset_s)) / rate``: the bag's own spacing, scaled; with
    ``duration_s`` only that many seconds of the bag from the start offset are played. With
    ``loop`` every further pass is due one pass period later, the period being the span from the replay start to
    the end of the bag (scaled), so topics that end early keep their silence at the end of each pass.
    """

    def __init__(
        self,
        bag: str | pathlib.Path,
        *,
        topics: Iterable[str] | None = None,
        remap: dict[str, str] | None = None,
        start_offset_s: float = 0.0,
        duration_s: float | None = None,
        rate: float = 1.0,
        loop: bool = False,
    ) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise BagError(f"rate must be a number > 0, got {rate}")
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise BagError(f"duration must be > 0 s, got {duration_s}")
        if not math.isfinite(start_offset_s) or start_offset_s < 0:
            raise BagError(f"start offset must be >= 0 s, got {start_offset_s}")
        self.path = pathlib.Path(bag)
        self.rate = rate
        self.loop = loop
        self._reader = _open_reader(self.path)
        try:
            self._plan(list(topics) if topics else [], remap or {}, start_offset_s, duration_s)
        except BaseException:
            self._reader.close()
            raise

    def _plan(self, topics: list[str], remap: dict[str, str], start_offset_s: float, duration_s: float | None) -> None:
        if not self._reader.message_count:
            raise BagError(f"{self.path} holds no messages")
        by_topic: dict[str, list[Connection]] = {}
        for connection in self._reader.connections:
            by_topic.setdefault(connection.topic, []).append(connection)
        if unknown := sorted(set(topics) - set(by_topic)):
            raise BagError(f"topic(s) {', '.join(unknown)} not in {self.path}; it has {', '.join(sorted(by_topic))}")
        selected = topics or sorted(by_topic)
        if stray := sorted(set(remap) - set(selected)):
            raise BagError(f"remap of {', '.join(stray)}: not a replayed topic (replayed: {', '.join(selected)})")
        planned = []
        for source in dict.fromkeys(selected):
            connections = by_topic[source]
            msgtypes = sorted({c.msgtype for c in connections})
            if len(msgtypes) > 1:
                raise BagError(f"{source} has several types in {self.path} ({', '.join(msgtypes)}); cannot replay it")
            qos = tuple(
                q for c in connections if isinstance(c.ext, ConnectionExtRosbag2) for q in c.ext.offered_qos_profiles
            )
            count = sum(c.msgcount for c in connections)
            planned.append(PlannedTopic(source, remap.get(source, source), msgtypes[0], count, qos))
        outputs = [p.topic for p in planned]
        if clashes := sorted({t for t in outputs if outputs.count(t) > 1}):
            raise BagError(f"several bag topics would be published on {', '.join(clashes)}")
        self.topics = tuple(planned)
        self._connections = [c for p in planned for c in by_topic[p.source]]
        self._outputs = {p.source: (p.topic, p.msgtype) for p in planned}

        bag_span_s = (self._reader.end_time - 1 - self._reader.start_time) / 1e9
        if start_offset_s > bag_span_s:
            raise BagError(f"start offset {start_offset_s} s is beyond the end of {self.path} ({bag_span_s:.3f} s)")
        self._start_ns = self._reader.start_time + round(start_offset_s * 1e9)
        # rosbags' end_time is the last message's time + 1 ns: a pass never ends at the instant the next begins.
        self._stop_ns = self._reader.end_time
        if duration_s is not None:
            self._stop_ns = min(self._stop_ns, self._start_ns + round(duration_s * 1e9))
        with contextlib.closing(
            self._reader.messages(self._connections, start=self._start_ns, stop=self._stop_ns)
        ) as first:
            if next(first, None) is None:
                raise BagError(f"no message of {', '.join(selected)} at or after {start_offset_s} s into {self.path}")
        self.pass_s = (self._stop_ns - self._start_ns) / 1e9 / self.rate
        if self.loop and self._stop_ns - 1 == self._start_ns:
            raise BagError("loop needs messages spread over time; from this start offset the bag is a single instant")

    def messages(self) -> Iterator[Scheduled]:
        """The plan's messages in due order, read from the bag as they are asked for (forever with ``loop``)."""
        for n in itertools.count() if self.loop else range(1):
            shift_s = n * self.pass_s
            for connection, timestamp, data in self._reader.messages(
                self._connections, start=self._start_ns, stop=self._stop_ns
            ):
                topic, msgtype = self._outputs[connection.topic]
                yield Scheduled(shift_s + (timestamp - self._start_ns) / 1e9 / self.rate, topic, msgtype, data)

    __iter__ = messages

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _open_reader(path: pathlib.Path) -> Reader | Ros1Bag:
    if not path.exists():
        raise BagError(f"no bag at {path}")
    ros1 = path.is_file() and path.suffix == ".bag"
    try:
        reader = Ros1Bag(path) if ros1 else Reader(path)
        reader.open()
    except (ReaderError, Ros1ReaderError, FileNotFoundError) as err:
        kind = "ROS 1 bag" if ros1 else "rosbag2 bag (a folder with metadata.yaml, or a .mcap or .db3 file)"
        raise BagError(f"{path} is not a readable {kind}: {err}") from err
    return reader


class LagHistogram:
    """How late messages went out, in constant memory: log-spaced bins 2% wide from 1 us, so a replay looping for
    hours keeps no list of lags. Percentiles are exact to one bin (2%); the worst lag is kept exactly."""

    _EDGES_MS = tuple(1e-3 * 1.02**k for k in range(1000))  # 1 us .. about 400 s

    def __init__(self) -> None:
        self._counts = [0] * (len(self._EDGES_MS) + 1)
        self.count = 0
        self.worst_ms = 0.0

    def add(self, lag_ms: float) -> None:
        self._counts[bisect.bisect_left(self._EDGES_MS, lag_ms)] += 1
        self.count += 1
        self.worst_ms = max(self.worst_ms, lag_ms)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in ms: the upper edge of its bin, capped at the worst lag seen."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(round(q / 100 * self.count, 6)))  # round: 99.9 % of 1000 is 999, not 999.0000001
        index = bisect.bisect_left(list(itertools.accumulate(self._counts)), rank)
        return min(self._EDGES_MS[index], self.worst_ms) if index < len(self._EDGES_MS) else self.worst_ms
