"""A standby coordinator, as plain values: when it takes over, and the latched plan turned back into the plan in force.

A standby hears the adverts like the active coordinator but publishes nothing; it watches the liveliness of the plan
writers (the active coordinator's plan writer offers ``plan_lease_s``, the standby's plan reader requests it) and
takes over when none is alive, so a coordinator killed with -9 is replaced within about a lease. To continue where
the dead one stopped, it takes the last plan published (transient-local, so it has it) as the plan in force: the
segments and standby copies that PlacementPlan's module assignments describe, so that the next look at the fleet
keeps what runs unless it must move (a host lost meanwhile re-routes to its copy). No rclpy here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from edge_lam.placement.assignments import Assignment
from edge_lam.placement.types import Plan, Segment, Unit, segment_memory_bytes

__all__ = ["TakeOver", "adopted_plan", "adopted_standbys", "unit_ranges"]


@dataclasses.dataclass
class TakeOver:
    """When a standby becomes active: no live plan writer ``confirm_s`` after a loss of liveliness and still none at
    the tick after the first that saw it so (a coordinator starved of CPU for a moment misses its lease and is alive
    again at its next assertion; two active coordinators would publish plans in turn; a standby starved itself may
    tick before its middleware threads have delivered the assertions that came meanwhile), or none seen ``wait_s``
    after it started and none in the ROS graph (it is the first coordinator, or the active one died before it
    started; a writer the graph lists but whose liveliness is not heard yet, late on a loaded host, is a live active
    coordinator). Times are seconds on one clock. An active coordinator never steps down (``active`` only turns
    true)."""

    started_at: float
    wait_s: float
    active: bool = False
    confirm_s: float = 0.0
    writers_alive: int = 0
    seen_writer: bool = False
    lost_at: float | None = None  # when the live plan writers dropped to none, until confirmed or alive again
    loss_ticked: bool = False  # a tick saw that loss last confirm_s: with confirm_s, the next one takes over

    def writers(self, alive: int, now: float) -> str | None:
        """The live plan writers changed to ``alive``; the reason to take over, or None to stay a standby."""
        self.writers_alive = alive
        self.seen_writer = self.seen_writer or alive > 0
        if self.active:
            return None
        if alive > 0:
            self.lost_at, self.loss_ticked = None, False
            return None
        if self.lost_at is None:
            self.lost_at = now
        return self.tick(now)

    def tick(self, now: float, writers_listed: int = 0) -> str | None:
        """The reason to take over (a loss confirmed, or no plan writer alive ``wait_s`` since the start and none
        of the ``writers_listed`` in the graph), else None."""
        if self.active:
            return None
        if self.lost_at is not None:
            if now - self.lost_at < self.confirm_s:
                return None
            if self.confirm_s > 0 and not self.loss_ticked:  # an assertion that came meanwhile has a tick more
                self.loss_ticked = True
                return None
            return self._take(f"the active coordinator's plan writer lost liveliness and stayed lost for "
                              f"{now - self.lost_at:.2f} s")
        if self.seen_writer or now - self.started_at < self.wait_s or writers_listed:
            return None
        return self._take(f"no live plan writer within {self.wait_s:g} s of starting, and none in the graph")

    def _take(self, why: str) -> str:
        self.active = True
        return why


def unit_ranges(assigned: Sequence[Assignment], units: Sequence[Unit]) -> list[tuple[str, int, int]]:
    """(host, start, end) of the units each chain module covers, in the order given; early exits (side branches,
    not units) are left out. ValueError for a module the model's units do not have where it stands."""
    index = {u.module: i for i, u in enumerate(units)}
    found = []
    for a in assigned:
        module = a.module
        if module.is_exit:
            continue
        if module.kind == "blocks":
            first = index.get(dataclasses.replace(module, layer_end=module.layer_start + 1))
            last = index.get(dataclasses.replace(module, layer_start=module.layer_end - 1))
            if first is None or last is None or last < first:
                raise ValueError(f"module {module} does not match the model's units")
            found.append((a.host_id, first, last + 1))
        elif module in index:
            found.append((a.host_id, index[module], index[module] + 1))
        else:
            raise ValueError(f"module {module} is not one of the model's units")
    return found


def adopted_plan(assigned: Sequence[Assignment], units: Sequence[Unit], context_tokens: int,
                 expected_latency_s: float, solver: str) -> Plan:
    """The plan a PlacementPlan's modules describe: one segment per run of consecutive modules on one host, with
    the memory the units need (as the solver counts it) and the compute the assignments expected. The hops'
    times are not in the message (NaN); the next look at the fleet prices the plan afresh anyway.

    ValueError when the modules do not cover the model's units once, in order, each host holding one range.
    """
    segments: list[Segment] = []
    for host, start, end in unit_ranges(assigned, units):
        expected = segments[-1].end if segments else 0
        if start != expected:
            raise ValueError(f"the plan's modules do not cover the units in order: units {start}..{end - 1} "
                             f"where unit {expected} was due")
        if segments and segments[-1].host_id == host:
            segments[-1] = Segment(host, segments[-1].start, end)
        else:
            segments.append(Segment(host, start, end))
    if not segments or segments[-1].end != len(units):
        covered = segments[-1].end if segments else 0
        raise ValueError(f"the plan's modules cover {covered} of the model's {len(units)} units")
    hosts = [s.host_id for s in segments]
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"the plan gives a host more than one range: {hosts}")
    compute = {s: math.fsum(a.expected_latency_s for a in assigned
                            if a.host_id == s.host_id and not a.module.is_exit) for s in segments}
    return Plan(
        segments=tuple(segments), expected_latency_s=expected_latency_s,
        compute_s=tuple(compute[s] for s in segments), transfer_s=(math.nan,) * (len(segments) + 1),
        memory_bytes=tuple(segment_memory_bytes(units, s.start, s.end, context_tokens) for s in segments),
        tokens_in_flight=1, context_tokens=context_tokens, solver=solver)


def adopted_standbys(copies: Sequence[Assignment], plan: Plan, units: Sequence[Unit]) -> tuple[Segment, ...]:
    """The standby copies a PlacementPlan carries, as segments of ``plan``: a segment's copy is the host that holds
    all of its units (copies of neighbouring segments on one host stay two copies). Units copied on no host, or
    on several, give that segment no copy."""
    holders: dict[int, set[str]] = {}
    for host, start, end in unit_ranges(copies, units):
        for i in range(start, end):
            holders.setdefault(i, set()).add(host)
    found = []
    for seg in plan.segments:
        common = set.intersection(*(holders.get(i, set()) for i in range(seg.start, seg.end)))
        if len(common) == 1:
            found.append(Segment(common.pop(), seg.start, seg.end))
    return tuple(found)
