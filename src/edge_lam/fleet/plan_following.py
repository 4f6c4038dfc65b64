"""Following the placement plan, as plain values: which plans to follow, and which shards to load, keep or unload
when one comes, given what the host runs already; and what to say about it on /diagnostics. No rclpy here: the host
agent hands plans and what it hosts in, and loads and unloads what comes out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from edge_lam.descriptors import DEFAULT_WIRE_DTYPE
from edge_lam.placement.assignments import Assignment, ShardGroup, shard_groups

__all__ = ["Hosting", "PlanChanges", "PlanFollower", "PlanOrder", "ShardLoad", "plan_changes"]


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
    """A shard as the agent builds it: the plan's group of modules and the model they come from; ``standby``: an
    idle copy (loaded and subscribed, serving nothing) that a later plan may switch on without loading anything."""

    group: ShardGroup
    model: str
    wire_dtype: str = DEFAULT_WIRE_DTYPE
    standby: bool = False
    weight_dtype: str = "float32"

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def module_ids(self) -> tuple[str, ...]:
        return self.group.module_ids

    def parameters(self, host_id: str) -> tuple[dict[str, object], dict[str, object]]:
        """The shard component's parameters: those a load request's own may override (model, wire dtype, host),
        then those that make it this shard (its modules and topics)."""
        return ({"model": self.model, "wire_dtype": self.wire_dtype, "host_id": host_id,
                 "weight_dtype": self.weight_dtype},
                {"modules": [str(m) for m in self.group.modules], "input_topic": self.group.input_topic,
                 "output_topic": self.group.output_topic, "standby": self.standby})

    def runs_as(self, other: ShardLoad) -> bool:
        """Same modules, topics, model, wire and weight dtypes: a running shard can stay (and keep its KV caches),
        a standby switched on or off. Memory is an estimate of the plan and may change without the shard changing."""
        return self._key() == other._key()

    def _key(self) -> tuple:
        return (self.model, self.wire_dtype, self.weight_dtype, self.group.modules, self.group.input_topic,
                self.group.output_topic)


@dataclasses.dataclass(frozen=True)
class Hosting:
    """A component this host runs, is loading, or failed to load, as following the plan sees it."""

    module_ids: tuple[str, ...]
    from_plan: bool
    failed: bool = False
    shard: ShardLoad | None = None  # what a shard was built from; None for other components


@dataclasses.dataclass(frozen=True)
class PlanChanges:
    """What to do on a new plan: components to unload (by name), shards to load, and shards to keep running as they
    are (now the plan's, whoever loaded them). ``forget``: failed loads of an earlier plan, dropped (and loaded again
    when this plan still wants them). ``switch``: kept shards to turn from standby to serving or back (a subset of
    ``keep``, as the plan wants them)."""

    unload: tuple[str, ...]
    load: tuple[ShardLoad, ...]
    keep: tuple[ShardLoad, ...]
    forget: tuple[str, ...] = ()
    switch: tuple[ShardLoad, ...] = ()


def plan_changes(running: Mapping[str, ShardLoad], wanted: Sequence[ShardLoad]) -> PlanChanges:
    """Turn the shards that run (or are loading) into those a plan wants, touching as few as possible.

    A wanted shard that runs under its name but differs (other topics or model) is unloaded and loaded again.
    """
    by_name = {w.name: w for w in wanted}
    unload = tuple(name for name, shard in running.items()
                   if name not in by_name or not shard.runs_as(by_name[name]))
    load = tuple(w for w in wanted if w.name in unload or w.name not in running)
    keep = tuple(w for w in wanted if w not in load)
    switch = tuple(w for w in keep if running[w.name].standby != w.standby)
    return PlanChanges(unload, load, keep, switch=switch)


@dataclasses.dataclass
class PlanFollower:
    """One host following the plans of the fleet's coordinator; ``level`` and ``note`` say how, for /diagnostics."""

    host_id: str
    default_model: str  # of shards whose plan names no model
    # Model ids a plan may name (the host's own default always): a plan names a model prepared in the host's cache,
    # never a folder of its choosing. None: any (pure tests).
    models: frozenset[str] | None = None
    order: PlanOrder = dataclasses.field(default_factory=PlanOrder)
    level: str = "ok"  # ok, or warn while the newest plan cannot be followed
    note: str = "no plan yet"

    def follow(self, plan_id: str, version: int, model_id: str, wire_dtype: str, assigned: Sequence[Assignment],
               hosted: Mapping[str, Hosting], standbys: Sequence[Assignment] = (),
               weight_dtype: str = "") -> PlanChanges:
        """The changes that make this host run what a newer plan (``order`` accepted it) gives it, and keep the
        idle copies it gives it (``standbys``)."""
        model = self.model_of(model_id)
        dtype, weights = wire_dtype or DEFAULT_WIRE_DTYPE, weight_dtype or "float32"
        wanted = [ShardLoad(g, model, dtype, weight_dtype=weights) for g in shard_groups(assigned, self.host_id)]
        wanted += [ShardLoad(g, model, dtype, standby=True, weight_dtype=weights)
                   for g in shard_groups(standbys, self.host_id)]
        names, modules = {w.name for w in wanted}, {m for w in wanted for m in w.module_ids}
        # The plan's shards, and components loaded by load_module that clash with them (a name or a module in
        # common): two shards of one module would both answer every packet.
        clashing = {n: h for n, h in hosted.items() if not h.failed
                    and (h.from_plan or n in names or modules.intersection(h.module_ids))}
        changes = plan_changes({n: h.shard for n, h in clashing.items() if h.shard is not None}, wanted)
        copies = sum(w.standby for w in wanted)
        self.level, self.note = "ok", f"plan {plan_id} v{version}: {len(wanted) - copies} shards here" + \
            (f" and {copies} standby copies" if copies else "")
        return PlanChanges(
            changes.unload + tuple(n for n, h in clashing.items() if h.shard is None), changes.load, changes.keep,
            tuple(n for n, h in hosted.items() if h.from_plan and h.failed), changes.switch)

    def model_of(self, model_id: str) -> str:
        """The model a plan or request names (the default when none); ValueError for one this host does not serve."""
        model = model_id or self.default_model
        if self.models is not None and model != self.default_model and model not in self.models:
            raise ValueError(f"model '{model}' is not one this host serves (model ids: "
                             f"{', '.join(sorted({self.default_model, *self.models}))}); a plan or request names a "
                             "prepared model by id, never a folder")
        return model

    def unusable(self, plan_id: str, version: int, err: Exception) -> str:
        """Note a plan that cannot be followed, such as one naming modules that do not exist (the host keeps what
        it runs); the line to log."""
        self.level, self.note = "warn", f"plan v{version} unusable: {err}"
        return f"plan {plan_id} v{version} unusable: {err}"
