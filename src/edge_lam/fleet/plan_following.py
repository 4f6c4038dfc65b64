"""Following the placement plan, as plain values: which plans to follow, and which shards to load, keep or unload
when one comes. No rclpy here: the host agent hands plans in and loads what comes out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from edge_lam.placement.assignments import ShardGroup

__all__ = ["PlanChanges", "PlanOrder", "ShardLoad", "plan_changes"]


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
    wire_dtype: str = "float16"

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def module_ids(self) -> tuple[str, ...]:
        return self.group.module_ids

    def runs_as(self, other: ShardLoad) -> bool:
        """Same modules, topics, model and wire dtype: a running shard can stay (and keep its KV caches). Memory is an
        estimate of the plan and may change without the shard changing."""
        return (self.model, self.wire_dtype, self.group.modules, self.group.input_topic, self.group.output_topic) == \
            (other.model, other.wire_dtype, other.group.modules, other.group.input_topic, other.group.output_topic)


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
