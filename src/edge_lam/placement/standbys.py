"""Standby copies: each segment of a plan loaded a second time, idle, on another host, so that losing a host is a
re-route (the next plan runs the segment where its copy already is) rather than a model load.

A copy goes where promoting it gives the fastest plan that fits: on a host with no segment, or on the host of a
neighbouring segment (the two then merge into one range, as the solver's one-range-per-host rule needs). A host's
memory pays for its own segment first, then for the copies it keeps, in chain order. Copies already chosen stay
where they are while they still fit, so that a routine look at the fleet does not reload them. No ROS here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from edge_lam.descriptors import Host, Link
from edge_lam.placement.assignments import Assignment
from edge_lam.placement.solver import evaluate
from edge_lam.placement.types import Plan, Segment, Unit, segment_modules

__all__ = ["choose_standbys", "copies", "merged", "promoted"]


def merged(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """Neighbouring segments on one host joined into one range."""
    out: list[Segment] = []
    for seg in segments:
        if out and out[-1].host_id == seg.host_id and out[-1].end == seg.start:
            out[-1] = Segment(seg.host_id, out[-1].start, seg.end)
        else:
            out.append(seg)
    return tuple(out)


def promoted(plan: Plan, standbys: Sequence[Segment], gone: Iterable[str]) -> tuple[Segment, ...] | None:
    """The plan with every segment of a host in ``gone`` on its standby's host instead, or None when a lost segment
    has no standby (or a standby of its own lost), or the result would give a host two ranges."""
    lost = set(gone)
    by_range = {(s.start, s.end): s.host_id for s in standbys if s.host_id not in lost}
    segments = []
    for seg in plan.segments:
        if seg.host_id in lost:
            host = by_range.get((seg.start, seg.end))
            if host is None:
                return None
            seg = Segment(host, seg.start, seg.end)
        segments.append(seg)
    joined = merged(segments)
    hosts = [s.host_id for s in joined]
    if len(set(hosts)) != len(hosts) or joined == plan.segments:
        return None
    return joined


def choose_standbys(plan: Plan, units: Sequence[Unit], hosts: Sequence[Host], links: Sequence[Link], *,
                    source_host: str, sink_host: str, context_tokens: int,
                    kept: Mapping[tuple[int, int], str] | None = None) -> tuple[Segment, ...]:
    """One standby per segment of ``plan`` where some host can hold it, in chain order.

    ``hosts`` carry the memory the solver may give them; ``kept`` maps a segment's range to its current standby
    host, which stays when it still fits and promotes to a feasible plan.
    """
    kept = kept or {}
    by_id = {h.host_id: h for h in hosts}
    room = {h.host_id: h.memory_free_bytes for h in hosts}
    for seg, need in zip(plan.segments, plan.memory_bytes, strict=True):
        room[seg.host_id] = room.get(seg.host_id, 0) - need
    owner = {i: seg.host_id for i, seg in enumerate(plan.segments)}
    chosen: list[Segment] = []
    for i, (seg, need) in enumerate(zip(plan.segments, plan.memory_bytes, strict=True)):
        neighbours = {owner.get(i - 1), owner.get(i + 1)}
        candidates = [h for h in by_id if h != seg.host_id and room[h] >= need
                      and (h in neighbours or h not in owner.values())]

        def latency(host: str, i: int = i, seg: Segment = seg) -> float:
            segments = merged([*plan.segments[:i], Segment(host, seg.start, seg.end), *plan.segments[i + 1:]])
            return evaluate(units, segments, hosts, links, source_host=source_host, sink_host=sink_host,
                            context_tokens=context_tokens).expected_latency_s

        priced = {h: latency(h) for h in candidates}
        feasible = sorted((t, h) for h, t in priced.items() if t < float("inf"))
        if not feasible:
            continue
        host = kept.get((seg.start, seg.end))
        if host not in priced or priced[host] == float("inf"):
            host = feasible[0][1]
        room[host] -= need
        chosen.append(Segment(host, seg.start, seg.end))
    return tuple(chosen)


def copies(assigned: Sequence[Assignment], plan: Plan, units: Sequence[Unit],
           standbys: Sequence[Segment]) -> list[Assignment]:
    """The standbys as module assignments: each module of a segment with a copy, on the copy's host (same topics).
    ``assigned`` is the plan's own, in chain order, before any early exit is added."""
    hosts = {(s.start, s.end): s.host_id for s in standbys}
    out, first = [], 0
    for seg in plan.segments:
        count = len(segment_modules(units, seg.start, seg.end))
        host = hosts.get((seg.start, seg.end))
        if host is not None:
            out += [dataclasses.replace(a, host_id=host) for a in assigned[first:first + count]]
        first += count
    return out
