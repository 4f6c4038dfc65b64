"""What a host agent knows of its host, as plain values: CPU load net of its own work, memory, and which shards to
load or unload when a plan comes.

The parsers take the text of ``/proc/stat`` and ``/proc/meminfo`` so they can be tested on any text; the two
``read_*`` functions are the only ones that touch the files. No rclpy here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence

from edge_lam.model.decompose import ModuleSpec
from edge_lam.placement.assignments import ShardGroup

__all__ = [
    "CpuSample",
    "PlanChanges",
    "PlanOrder",
    "ShardLoad",
    "cpu_sample",
    "load_between",
    "mem_available_bytes",
    "plan_changes",
    "read_cpu_sample",
    "read_mem_available_bytes",
]


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """CPU seconds of the whole machine (all cores together) and of this process, at one moment."""

    busy_s: float
    total_s: float
    own_s: float


def cpu_sample(stat_text: str, own_s: float, ticks_per_s: float) -> CpuSample:
    """The machine's busy and total CPU time from ``/proc/stat`` text (its aggregate ``cpu`` line)."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal; guest time is already counted in user and nice
            ticks = [int(v) for v in fields[1:9]]
            idle = sum(ticks[3:5])
            total = sum(ticks)
            return CpuSample((total - idle) / ticks_per_s, total / ticks_per_s, own_s)
    raise ValueError("no aggregate 'cpu' line in the /proc/stat text")


def read_cpu_sample() -> CpuSample:
    with open("/proc/stat") as stat:
        return cpu_sample(stat.read(), time.process_time(), os.sysconf("SC_CLK_TCK"))


def load_between(earlier: CpuSample, later: CpuSample) -> float:
    """The busy fraction of all cores between two samples, less this process's own share, in [0, 1].

    The agent's own work (its shards) is left out: the coordinator should see how much of the host others use,
    or a host would look busier the more modules it is given. The kernel counts /proc/stat in ticks and a process
    to the nanosecond, so the difference can dip below zero; it is clamped.
    """
    total = later.total_s - earlier.total_s
    if total <= 0:
        return 0.0
    others = (later.busy_s - earlier.busy_s) - (later.own_s - earlier.own_s)
    return min(1.0, max(0.0, others / total))


def mem_available_bytes(meminfo_text: str) -> int:
    """``MemAvailable`` of ``/proc/meminfo`` text, in bytes: what can be given to new work without swapping."""
    for line in meminfo_text.splitlines():
        if line.startswith("MemAvailable:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected unit '{unit}' in /proc/meminfo")
            return int(value) * 1024
    raise ValueError("no MemAvailable line in the /proc/meminfo text")


def read_mem_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        return mem_available_bytes(meminfo.read())


@dataclasses.dataclass
class PlanOrder:
    """Which plans to follow. Versions count per coordinator (per ``plan_id``): an older or repeated version of
    the plan in force is ignored. A plan with another id (a standby coordinator taking over) replaces it only when
    its stamp is newer, so a stale plan that a late-joining transient-local reader replays cannot win."""

    plan_id: str | None = None
    version: int = -1
    stamp_ns: int = -1

    def accept(self, plan_id: str, version: int, stamp_ns: int) -> bool:
        """Whether to follow this plan; if so it becomes the newest seen."""
        if self.plan_id is not None:
            if plan_id == self.plan_id and version <= self.version:
                return False
            if plan_id != self.plan_id and stamp_ns <= self.stamp_ns:
                return False
        self.plan_id, self.version, self.stamp_ns = plan_id, version, stamp_ns
        return True


@dataclasses.dataclass(frozen=True)
class ShardLoad:
    """A shard as the agent builds it: the plan's group of modules and the model they come from."""

    group: ShardGroup
    model: str

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def module_ids(self) -> tuple[str, ...]:
        return tuple(ModuleSpec.parse(m).module_id for m in self.group.modules)

    def runs_as(self, other: ShardLoad) -> bool:
        """Same modules, topics and model: a running shard can stay (and keep its KV caches). Memory is an
        estimate of the plan and may change without the shard changing."""
        return (self.model, self.group.modules, self.group.input_topic, self.group.output_topic) == \
            (other.model, other.group.modules, other.group.input_topic, other.group.output_topic)


@dataclasses.dataclass(frozen=True)
class PlanChanges:
    """What to do on a new plan: shards to unload (by name), to load, and to keep running as they are."""

    unload: tuple[str, ...]
    load: tuple[ShardLoad, ...]
    keep: tuple[ShardLoad, ...]


def plan_changes(running: Mapping[str, ShardLoad], wanted: Sequence[ShardLoad]) -> PlanChanges:
    """Turn the shards that run (or are loading) into those a plan wants, touching as few as possible.

    A wanted shard that runs under its name but differs (other topics or model) is unloaded and loaded again.
    """
    by_name = {w.name: w for w in wanted}
    unload = tuple(name for name, shard in running.items()
                   if name not in by_name or not shard.runs_as(by_name[name]))
    load = tuple(w for w in wanted if w.name in unload or w.name not in running)
    keep = tuple(w for w in wanted if w not in load)
    return PlanChanges(unload, load, keep)
