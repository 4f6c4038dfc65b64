"""Place a chain of model units on hosts: contiguous ranges, one per host, minimising the expected latency per step.

A plan cuts the chain into segments and gives each to a different host. The latency of one step (``tokens_in_flight``
tokens going through the chain together: 1 while decoding, the prompt length for prefill) is the compute time of
every segment plus the transfer time of every hop: source -> first segment, between segments, last segment -> sink.
A unit's compute time is a roofline (``placement.roofline``): its weights and KV cache read at the host's memory
bandwidth or its FLOPs at the host's GFLOP/s, whichever is slower.
A segment must fit its host's free memory with its weights and the KV cache of ``context_tokens`` tokens.

``solve`` is exact: dynamic programming over (units placed, last host, set of hosts used). The set is what keeps
each host to one range, so that a host's memory is checked against everything it holds. It is exponential in the
number of hosts only (2^12 sets stay well under a second); above ``max_exact_hosts`` it solves exactly over the
fastest hosts and says so in ``Plan.solver``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_lam.descriptors import Host, Link
from edge_lam.placement.roofline import unit_s
from edge_lam.placement.types import (
    TOKEN_ID_BYTES,
    PlacedModule,
    PlacementError,
    Plan,
    Segment,
    Unit,
    merged_units,
    segment_memory_bytes,
)

__all__ = ["MAX_EXACT_HOSTS", "evaluate", "placed_modules", "proportional_to_memory", "solve"]

MAX_EXACT_HOSTS = 12  # 2^12 host sets x 12 hosts x a few numpy calls each: well under a second for 32 units


def placed_modules(plan: Plan, units: Sequence[Unit], hosts: Iterable[Host]) -> list[PlacedModule]:
    """The plan's modules in chain order, priced on their hosts, ready to become ModuleAssignment messages."""
    by_id = {h.host_id: h for h in hosts}
    placed = []
    for segment in plan.segments:
        host = by_id.get(segment.host_id, Host(segment.host_id, 0.0, 0))
        for module, members in merged_units(units, segment.start, segment.end):
            memory = sum(u.memory_bytes(plan.context_tokens) for u in members)
            if any(u.module.kind == "embedding" for u in units[segment.start:segment.end]):
                memory -= sum(u.tied_bytes for u in members)  # the embedding's module holds the tied matrix
            placed.append(PlacedModule(module, segment.host_id, memory,
                                       _compute_s(members, host, plan.tokens_in_flight, plan.context_tokens)))
    return placed


def _compute_s(units: Iterable[Unit], host: Host, tokens: int, context_tokens: int) -> float:
    return math.fsum(unit_s(u, host, tokens, context_tokens) for u in units)


def _link_table(links: Iterable[Link]) -> dict[tuple[str, str], Link]:
    table = {(link.src, link.dst): link for link in links}
    for (src, dst), link in list(table.items()):
        table.setdefault((dst, src), link)
    return table


def _hop_s(table: dict[tuple[str, str], Link], src: str, dst: str, nbytes: float) -> float:
    if src == dst:
        return 0.0
    link = table.get((src, dst))
    return math.inf if link is None else link.transfer_s(nbytes)


def _boundary_bytes(units: Sequence[Unit], index: int, tokens: int, input_bytes_per_token: float) -> float:
    """Bytes crossing the boundary before unit ``index`` (the source's input at 0, the head's output at the end)."""
    return input_bytes_per_token * tokens if index == 0 else units[index - 1].out_bytes(tokens)


def evaluate(
    units: Sequence[Unit],
    segments: Iterable[tuple[str, int, int]],
    hosts: Iterable[Host],
    links: Iterable[Link],
    *,
    source_host: str,
    sink_host: str,
    tokens_in_flight: int = 1,
    context_tokens: int = 2048,
    input_bytes_per_token: float = TOKEN_ID_BYTES,
    solver: str = "given",
) -> Plan:
    """Price a given placement (a baseline, or the plan in force on a changed fleet).

    A malformed placement (gaps, overlaps, a host used twice) raises PlacementError. One that the fleet cannot
    run (a host gone, memory short, a link missing) comes back with ``problems`` and an infinite latency.
    """
    segs = tuple(Segment(*s) for s in segments)
    _check_segments(segs, len(units))
    by_id = {h.host_id: h for h in hosts}
    table = _link_table(links)
    problems: list[str] = []
    compute, memory, transfer = [], [], []
    previous = source_host
    for seg in segs:
        members = units[seg.start:seg.end]
        need = segment_memory_bytes(units, seg.start, seg.end, context_tokens)
        host = by_id.get(seg.host_id)
        if host is None:
            problems.append(f"host '{seg.host_id}' is not among the hosts")
            compute.append(math.inf)
        elif host.gflops <= 0:
            problems.append(f"host '{seg.host_id}' advertises no compute")
            compute.append(math.inf)
        else:
            compute.append(_compute_s(members, host, tokens_in_flight, context_tokens))
        if host is not None and need > host.memory_free_bytes:
            problems.append(f"units {seg.start}..{seg.end - 1} need {need} bytes on '{seg.host_id}', "
                            f"which has {host.memory_free_bytes} free")
        memory.append(need)
        transfer.append(_hop_s(table, previous, seg.host_id,
                               _boundary_bytes(units, seg.start, tokens_in_flight, input_bytes_per_token)))
        if not math.isfinite(transfer[-1]):
            problems.append(f"no link between '{previous}' and '{seg.host_id}'")
        previous = seg.host_id
    transfer.append(_hop_s(table, previous, sink_host, units[-1].out_bytes(tokens_in_flight)))
    if not math.isfinite(transfer[-1]):
        problems.append(f"no link between '{previous}' and '{sink_host}'")
    total = math.inf if problems else math.fsum(compute) + math.fsum(transfer)
    return Plan(segs, total, tuple(compute), tuple(transfer), tuple(memory), tokens_in_flight, context_tokens,
                solver, tuple(problems))


def _check_segments(segments: tuple[Segment, ...], num_units: int) -> None:
    if not segments:
        raise PlacementError("a placement needs at least one segment")
    hosts = [s.host_id for s in segments]
    if len(set(hosts)) != len(hosts):
        raise PlacementError(f"a host may hold one range only, got {hosts}")
    end = 0
    for s in segments:
        if s.start != end or s.end <= s.start:
            raise PlacementError(f"segments must cover units 0..{num_units - 1} in order, got {list(segments)}")
        end = s.end
    if end != num_units:
        raise PlacementError(f"segments cover {end} units, the chain has {num_units}")


@dataclass(frozen=True)
class _Step:
    """What one step of the chain carries, and between which ends."""

    source_host: str
    sink_host: str
    tokens_in_flight: int
    context_tokens: int
    input_bytes_per_token: float


def solve(
    units: Sequence[Unit],
    hosts: Sequence[Host],
    links: Iterable[Link],
    *,
    source_host: str,
    sink_host: str,
    tokens_in_flight: int = 1,
    context_tokens: int = 2048,
    input_bytes_per_token: float = TOKEN_ID_BYTES,
    max_exact_hosts: int = MAX_EXACT_HOSTS,
) -> Plan:
    """The placement of least expected latency per step, or PlacementError saying what does not fit.

    ``source_host`` sends the chain its input (``input_bytes_per_token`` per token: token ids, or a raw frame when
    the first unit is an encoder); ``sink_host`` receives the head's output. Neither has to be among ``hosts``.
    ``context_tokens`` sizes each segment's KV cache and the attention work per token.
    """
    if not units:
        raise PlacementError("the chain has no units")
    if tokens_in_flight < 1 or context_tokens < 0:
        raise PlacementError(f"tokens_in_flight {tokens_in_flight} must be >= 1, context_tokens {context_tokens} >= 0")
    if not hosts:
        raise PlacementError("no hosts to place the chain on")
    ids = [h.host_id for h in hosts]
    if len(set(ids)) != len(ids):
        raise PlacementError(f"host ids must be unique, got {ids}")
    links = list(links)
    pool, label = list(hosts), "exact_dp"
    if len(pool) > max_exact_hosts:
        # Keep the fastest hosts; the ones the data enters and leaves by are kept too, as hops to them are free.
        ends = [h for h in pool if h.host_id in (source_host, sink_host)]
        rest = sorted((h for h in pool if h not in ends), key=lambda h: (-h.gflops, -h.memory_free_bytes, h.host_id))
        pool = [*ends, *rest][:max_exact_hosts]
        label = f"heuristic:exact_dp_over_{len(pool)}_fastest_of_{len(hosts)}_hosts"
    step = _Step(source_host, sink_host, tokens_in_flight, context_tokens, input_bytes_per_token)
    segments = _best_segments(units, pool, _link_table(links), step)
    if segments is None:
        raise PlacementError(_why_infeasible(units, pool, links, step))
    plan = evaluate(units, segments, pool, links, source_host=source_host, sink_host=sink_host,
                    tokens_in_flight=tokens_in_flight, context_tokens=context_tokens,
                    input_bytes_per_token=input_bytes_per_token, solver=label)
    assert plan.feasible, plan.problems  # the DP only builds plans that evaluate accepts
    return plan


def _best_segments(
    units: Sequence[Unit],
    hosts: Sequence[Host],
    table: dict[tuple[str, str], Link] | None,
    step: _Step,
) -> list[Segment] | None:
    """The DP. State (set of hosts used, last host, units placed) -> least latency so far; ``table`` None means
    every pair of hosts is linked for free (used to tell a memory problem from a link problem)."""
    n, k = len(units), len(hosts)
    tokens_in_flight, context_tokens = step.tokens_in_flight, step.context_tokens
    cum_mem = np.concatenate([[0.0], np.cumsum([float(u.memory_bytes(context_tokens)) for u in units])])
    upper = np.triu(np.ones((n + 1, n + 1), dtype=bool), 1)  # [i, j] with i < j: units i..j-1
    span_mem = cum_mem[None, :] - cum_mem[:, None]
    for e in (i for i, u in enumerate(units) if u.module.kind == "embedding"):
        for t in (i for i, u in enumerate(units) if u.tied_bytes):  # spans holding both count the tie once
            span_mem[:min(e, t) + 1, max(e, t) + 1:] -= units[t].tied_bytes
    # compute[b][i, j]: units i..j-1 on host b, infinite where they do not fit or the range is empty
    compute = np.full((k, n + 1, n + 1), np.inf)
    for b, host in enumerate(hosts):
        ok = upper & (span_mem <= host.memory_free_bytes)
        if host.gflops > 0:
            cum_s = np.concatenate([[0.0], np.cumsum([unit_s(u, host, tokens_in_flight, context_tokens)
                                                      for u in units])])
            compute[b][ok] = (cum_s[None, :] - cum_s[:, None])[ok]
    boundary = [_boundary_bytes(units, i, tokens_in_flight, step.input_bytes_per_token) for i in range(n + 1)]
    def price(src: str, dst: str, nbytes: float) -> float:
        return 0.0 if table is None else _hop_s(table, src, dst, nbytes)

    senders = [h.host_id for h in hosts] + [step.source_host]  # row k: the source, before any segment
    # hop[i, a, b]: sender a to host b at the boundary before unit i
    hop = np.array([[[price(a, h.host_id, boundary[i]) for h in hosts] for a in senders] for i in range(n)])
    to_sink = np.array([price(h.host_id, step.sink_host, boundary[n]) for h in hosts])

    best = np.full((1 << k, k + 1, n + 1), np.inf)
    back_host = np.zeros((1 << k, k, n + 1), dtype=np.int64)
    back_unit = np.zeros((1 << k, k, n + 1), dtype=np.int64)
    best[0, k, 0] = 0.0
    columns = np.arange(n + 1)
    for used in range(1 << k):  # a superset is always a larger number, so it comes after its subsets
        here = best[used, :, :n]
        if not np.isfinite(here).any():
            continue
        for b in range(k):
            if used >> b & 1:
                continue
            arrive = here + hop[:, :, b].T  # [a, i]: at unit i with last host a, then hop to b
            sender = np.argmin(arrive, axis=0)
            start_cost = arrive[sender, np.arange(n)]
            total = start_cost[:, None] + compute[b][:n, :]  # [i, j]: b takes units i..j-1
            start = np.argmin(total, axis=0)
            cost = total[start, columns]
            target = best[used | 1 << b, b]
            better = cost < target
            target[better] = cost[better]
            back_host[used | 1 << b, b][better] = sender[start[better]]
            back_unit[used | 1 << b, b][better] = start[better]

    finish = best[:, :k, n] + to_sink[None, :]
    low = finish.min()
    if not np.isfinite(low):
        return None
    # Among plans equal up to rounding, the one with fewer segments: fewer modules to move, fewer hops to fail.
    near = np.argwhere(finish <= low + 1e-12 * max(1.0, abs(low)))
    used, b = min(near.tolist(), key=lambda ub: (bin(ub[0]).count("1"), ub[0], ub[1]))
    segments, end = [], n
    while used:
        start, previous = int(back_unit[used, b, end]), int(back_host[used, b, end])
        segments.append(Segment(hosts[b].host_id, start, end))
        used, b, end = used & ~(1 << b), previous, start
    return segments[::-1]


def _why_infeasible(units: Sequence[Unit], hosts: Sequence[Host], links: list[Link], step: _Step) -> str:
    """Name the first reason a placement is impossible: a unit too big for any host, too little memory in all,
    no split into one range per host, or missing links."""
    context_tokens = step.context_tokens
    able = [h for h in hosts if h.gflops > 0]
    if not able:
        return f"none of the hosts {[h.host_id for h in hosts]} advertises any compute"
    largest = max(able, key=lambda h: h.memory_free_bytes)
    for index, unit in enumerate(units):
        need = unit.memory_bytes(context_tokens)
        if need > largest.memory_free_bytes:
            return (f"unit {index} '{unit.module}' fits on no host: it needs {need} bytes ({unit.weight_bytes} of "
                    f"weights + {need - unit.weight_bytes} of KV cache for {context_tokens} tokens), the largest "
                    f"free memory is {largest.memory_free_bytes} on '{largest.host_id}' "
                    f"(short by {need - largest.memory_free_bytes})")
    need = sum(u.memory_bytes(context_tokens) for u in units)
    have = sum(h.memory_free_bytes for h in able)
    if need > have:
        return (f"the chain needs {need} bytes ({context_tokens} tokens of KV cache included), the hosts have "
                f"{have} free in all (short by {need - have})")
    if _best_segments(units, able, None, step) is None:
        return (f"the chain's {len(units)} units ({need} bytes) do not split into one contiguous range per host "
                f"within the free memory of {', '.join(f'{h.host_id}={h.memory_free_bytes}' for h in able)}")
    known = sorted({f"{link.src}-{link.dst}" for link in links})
    return (f"every placement that fits in memory needs a link that is missing between '{step.source_host}', "
            f"the hosts and '{step.sink_host}' (links known: {', '.join(known) or 'none'})")


def proportional_to_memory(units: Sequence[Unit], hosts: Sequence[Host], *, context_tokens: int = 0) -> list[Segment]:
    """The baseline a user would try: units split over ``hosts`` in the given order in proportion to free memory.

    A unit goes to the host whose share of the total memory covers the middle of the unit's share of the chain.
    """
    weights = np.array([float(u.memory_bytes(context_tokens)) for u in units])
    shares = np.array([max(0.0, float(h.memory_free_bytes)) for h in hosts])
    if not units or shares.sum() <= 0 or weights.sum() <= 0:
        raise PlacementError("proportional split needs units with memory and hosts with free memory")
    middles = (np.cumsum(weights) - weights / 2) / weights.sum()
    bounds = np.cumsum(shares) / shares.sum()
    owner = np.minimum(np.searchsorted(bounds, middles, side="left"), len(hosts) - 1)
    segments: list[Segment] = []
    for index, h in enumerate(owner.tolist()):
        if segments and segments[-1].host_id == hosts[h].host_id:
            segments[-1] = segments[-1]._replace(end=index + 1)
        else:
            segments.append(Segment(hosts[h].host_id, index, index + 1))
    return segments

