"""What the coordinator knows of the fleet and when it moves modules: adverts in, plans (or reasons to stay) out.

No ROS here: the coordinator node hands this core every advert, every loss of liveliness of an advert writer and a
clock tick, and publishes what it decides. Hosts join with their first advert and leave when their advert is older
than ``host_timeout_s``, or sooner after a liveliness loss (the event does not say whose writer it was, so a host
silent for ``MISSED_ADVERTS`` of its advert intervals when the event comes, or soon after, is taken for the lost
one). A look at the fleet solves the placement (exactly up to MAX_EXACT_HOSTS hosts) and moves only when the plan in
force, re-priced on today's fleet, is slower by more than the hysteresis margin; a plan that lost a host is
infinitely slow, so its modules always move if they can. With ``standbys`` on, every plan also keeps an idle copy of
each segment on a second host (``placement.standbys``), and a host's loss first tries the plan that runs its segments
on their copies: a re-route, with no model to load.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from edge_lam.descriptors import Advert, Host, Link
from edge_lam.placement.assignments import Assignment
from edge_lam.placement.policy import should_move
from edge_lam.placement.solver import evaluate, solve
from edge_lam.placement.standbys import choose_standbys, promoted
from edge_lam.placement.types import PlacementError, Plan, Segment, Unit

__all__ = ["Chain", "Coordinator", "Decision", "FleetFull", "Policy", "placement_table", "solver_memory"]

FREE_GATEWAY = "(gateway)"  # the chain's ends when no gateway host is named: every host reaches it for free
MISSED_ADVERTS = 3.0  # after a liveliness loss, a host silent for this many of its advert intervals is the lost one
INTERVALS_KEPT = 8  # a host's advert interval is the median of this many
# The plan in force is published again, re-priced, when its price on the fleet as heard now is this far from the
# one it went out with (a link probed again, a host's load): its expected latency is what gateways check against.
REPRICE_DRIFT = 0.25


def solver_memory(advert: Advert, held_bytes: int) -> int:
    """Memory the solver may give a host: what it has free plus what the plan in force holds there.

    Without the credit, the plan in force would look infeasible on its own hosts once they load it. Capped at the
    host's total: before a host has loaded its modules its free memory still includes them, and counting them twice
    would let the solver overfill it.
    """
    return min(advert.memory_free_bytes + held_bytes, max(advert.memory_total_bytes, advert.memory_free_bytes))


@dataclass(frozen=True)
class Chain:
    """What is placed and between which ends. ``gateway_host`` "" means the gateway's hops cost nothing."""

    units: tuple[Unit, ...]
    num_layers: int
    gateway_host: str = ""
    context_tokens: int = 2048


@dataclass(frozen=True)
class Policy:
    """When hosts count as gone and when a better plan is worth moving modules for."""

    host_timeout_s: float = 2.0
    min_gain: float = 0.1
    min_gain_s: float = 0.0
    replan_period_s: float = 1.0
    settle_s: float = 1.0
    max_hosts: int = 64
    min_look_interval_s: float = 0.25
    standbys: bool = True


@dataclass(frozen=True)
class Decision:
    """The outcome of one look at the fleet.

    ``plan`` is the new plan to publish, None to keep the plan in force; ``current`` is the plan in force priced on
    the fleet as it is now (None before the first plan); ``best`` is the solver's plan (None when none fits);
    ``error`` says why no plan fits, "" when one does; ``hosts`` is the fleet the plans were priced on.
    ``routine`` marks a periodic look (load or links changed) rather than a join, a leave or the first plan.
    ``standbys``: the idle copies that go with the plan in force (one per segment that some host can hold);
    ``standbys_changed``: they differ from the last decision's, so the plan in force goes out again with them.
    """

    reason: str
    hosts: tuple[Host, ...]
    plan: Plan | None = None
    current: Plan | None = None
    best: Plan | None = None
    error: str = ""
    routine: bool = False
    standbys: tuple[Segment, ...] = ()
    standbys_changed: bool = False


@dataclass(frozen=True)
class _Heard:
    """The last advert of a host, when it came, and how long after the one before."""

    advert: Advert
    at: float
    intervals: tuple[float, ...] = ()  # between this host's last adverts, the newest last

    @property
    def interval_s(self) -> float | None:
        """The host's advert period as heard: the median of the last intervals, so that one advert late (its agent
        busy computing a step) does not make a lost host look like one that is merely slow."""
        return statistics.median(self.intervals) if self.intervals else None


class FleetFull(ValueError):
    """An advert from a new host when ``max_hosts`` hosts are already heard: it is not taken."""


class Coordinator:
    """The fleet as heard, the plan in force, and the decisions to replace it. Times are seconds on one clock."""

    def __init__(self, chain: Chain, policy: Policy | None = None) -> None:
        self.chain = chain
        self.policy = policy or Policy()
        self.plan: Plan | None = None  # the plan in force: the last one decided
        self.standbys: tuple[Segment, ...] = ()  # its idle copies
        self._heard: dict[str, _Heard] = {}
        self._first_advert_at: float | None = None
        self._liveliness_lost_at: float | None = None
        self._writers_lost = 0  # advert writers lost since then and not yet put down to a silent host
        self._changed = False  # an advert changed since the last look
        self._joined: list[str] = []  # hosts that joined since the last look
        self._looked_at: float | None = None

    @property
    def host_ids(self) -> list[str]:
        return sorted(self._heard)

    def settled(self, now: float) -> bool:
        """Whether the first plan may be made: hosts starting together get ``settle_s`` to be heard."""
        return self._first_advert_at is not None and now - self._first_advert_at >= self.policy.settle_s

    def advert(self, advert: Advert, now: float) -> Decision | None:
        """Record an advert; a host heard for the first time after the settling gets a look at once, or at the
        next tick when the last look was less than ``min_look_interval_s`` ago (a flood of joins costs one look
        per interval). FleetFull for a new host beyond ``max_hosts``."""
        heard = self._heard.get(advert.host_id)
        if heard is None and len(self._heard) >= self.policy.max_hosts:
            raise FleetFull(f"host '{advert.host_id}' not taken: {len(self._heard)} hosts heard, max_hosts is "
                            f"{self.policy.max_hosts}")
        intervals = () if heard is None else (*heard.intervals[1 - INTERVALS_KEPT:], now - heard.at)
        self._heard[advert.host_id] = _Heard(advert, now, intervals)
        if self._first_advert_at is None:
            self._first_advert_at = now
        if heard is None and self.settled(now):
            self._joined.append(advert.host_id)
            if self._looked_at is None or now - self._looked_at >= self.policy.min_look_interval_s:
                return self._look(self._joins(), now)
            return None
        self._changed = self._changed or heard is None or heard.advert != advert
        return None

    def _joins(self) -> str:
        joined, self._joined = self._joined, []
        if len(joined) == 1:
            return f"host '{joined[0]}' joined"
        return f"{len(joined)} hosts joined ({', '.join(joined[:5])}{', ...' if len(joined) > 5 else ''})"

    def liveliness_lost(self, now: float, writers: int = 1) -> None:
        """``writers`` advert writers lost liveliness (their processes died or they were destroyed); whose, the next
        ticks tell: as many hosts as were lost, the most silent first, and no more (a host busy serving the
        re-routed modules may be late with an advert just then)."""
        if self._liveliness_lost_at is None:
            self._liveliness_lost_at = now
        self._writers_lost += writers

    def liveliness_regained(self, writers: int = 1) -> None:
        """Writers that lost liveliness asserted it again (starved of CPU for a lease, not dead): fewer to find."""
        self._writers_lost = max(0, self._writers_lost - writers)
        if self._writers_lost == 0:
            self._liveliness_lost_at = None

    def adopt(self, plan: Plan | None, standbys: Sequence[Segment] = ()) -> None:
        """Make ``plan`` and its copies the plan in force (None: none, the next plan is placed afresh): a standby
        coordinator taking over continues from the last plan published. The next tick looks at the fleet, as hosts
        may have gone with the coordinator."""
        self.plan, self.standbys, self._looked_at = plan, tuple(standbys), None

    def tick(self, now: float) -> Decision | None:
        """Drop the hosts that are gone and look at the fleet when that, the settling or a change calls for it."""
        gone = self._expire(now)
        if not self.settled(now):
            return None
        if gone:
            return self._look("; ".join(f"host {host_id!r} left, {why}" for host_id, why in gone), now,
                              gone=[host_id for host_id, _ in gone])
        if self._joined and now - (self._looked_at or 0.0) >= self.policy.min_look_interval_s:
            return self._look(self._joins(), now)
        if self._looked_at is None:
            return self._look(f"first plan, {len(self._heard)} hosts heard", now)
        if self._changed and now - self._looked_at >= self.policy.replan_period_s:
            return self._look("load, memory or links changed", now, routine=True)
        return None

    def hosts(self) -> list[Host]:
        """The fleet as the solver sees it, in host id order so that ties between plans break the same way."""
        held: dict[str, int] = {}
        if self.plan is not None:  # what the plan in force holds, its copies too, is the solver's to give again
            by_range = {(s.start, s.end): need for s, need in zip(self.plan.segments, self.plan.memory_bytes,
                                                                 strict=True)}
            for seg in (*self.plan.segments, *self.standbys):
                held[seg.host_id] = held.get(seg.host_id, 0) + by_range.get((seg.start, seg.end), 0)
        return [Host(host_id, h.advert.effective_gflops, solver_memory(h.advert, held.get(host_id, 0)),
                     h.advert.role, h.advert.effective_bandwidth_gbps)
                for host_id, h in sorted(self._heard.items())]

    def links(self) -> list[Link]:
        """Links the hosts measured between themselves, and free hops to and from a gateway left unnamed."""
        links = [link for h in self._heard.values() for link in h.advert.links if link.dst in self._heard]
        if self._gateway() == FREE_GATEWAY:
            links += [Link(FREE_GATEWAY, host_id, 0.0, math.inf) for host_id in sorted(self._heard)]
        return links

    def _expire(self, now: float) -> list[tuple[str, str]]:
        """Forget the hosts that are gone; return each with why it counts as gone."""
        lost_at, timeout = self._liveliness_lost_at, self.policy.host_timeout_s
        gone = [(host_id, f"no advert for {timeout:g} s") for host_id, h in sorted(self._heard.items())
                if now - h.at > timeout]
        if lost_at is not None:
            silent = sorted((h.at, host_id) for host_id, h in self._heard.items()
                            if h.at < lost_at and (host_id, f"no advert for {timeout:g} s") not in gone
                            and now - h.at > min(timeout, MISSED_ADVERTS * (h.interval_s or timeout)))
            for _, host_id in silent[:self._writers_lost]:
                gone.append((host_id, "silent since a writer lost liveliness"))
                self._writers_lost -= 1
        for host_id, _ in gone:
            del self._heard[host_id]
        if lost_at is not None and (self._writers_lost <= 0 or all(h.at >= lost_at for h in self._heard.values())):
            # the lost writers are accounted for, or every host left has spoken since (a writer of no host's)
            self._liveliness_lost_at, self._writers_lost = None, 0
        return gone

    def _gateway(self) -> str:
        """Where the chain starts and ends: the named gateway host while it is heard. A named host that is gone
        (its agent died, the gateway may live on) costs nothing rather than making every placement infeasible."""
        named = self.chain.gateway_host
        return named if named and named in self._heard else FREE_GATEWAY

    def _look(self, reason: str, now: float, routine: bool = False, gone: Sequence[str] = ()) -> Decision:
        self._changed, self._looked_at = False, now
        hosts, links = self.hosts(), self.links()
        gateway = self._gateway()
        if gateway == FREE_GATEWAY and self.chain.gateway_host:
            reason += f" (gateway host {self.chain.gateway_host!r} not heard: its hops priced free)"
        ends = dict(source_host=gateway, sink_host=gateway, context_tokens=self.chain.context_tokens)
        current = None if self.plan is None else evaluate(self.chain.units, self.plan.segments, hosts, links, **ends)
        rerouted = self._rerouted(gone, hosts, links, ends)
        if rerouted is not None:
            self.plan = rerouted
            return self._with_standbys(Decision(f"{reason}: its standby copies take over", tuple(hosts),
                                                plan=rerouted, current=current, best=rerouted), hosts, links, ends)
        try:
            best = solve(self.chain.units, hosts, links, **ends)
        except PlacementError as error:
            # Above MAX_EXACT_HOSTS the solver searches the fastest hosts only and may miss the plan in force.
            why = "" if current is not None and current.feasible else str(error)
            return Decision(reason, tuple(hosts), current=current, error=why, routine=routine,
                            standbys=self.standbys)
        if current is None or should_move(current.expected_latency_s, best.expected_latency_s,
                                          min_gain=self.policy.min_gain, min_gain_s=self.policy.min_gain_s):
            self.plan = best
            return self._with_standbys(Decision(reason, tuple(hosts), plan=best, current=current, best=best,
                                                routine=routine), hosts, links, ends)
        if current is not None and current.feasible and self.plan is not None and \
                self.plan.expected_latency_s > 0 and \
                abs(current.expected_latency_s / self.plan.expected_latency_s - 1.0) > REPRICE_DRIFT:
            self.plan = replace(current, solver=self.plan.solver)  # the same modules in the same places
            return self._with_standbys(Decision(f"{reason}: the plan in force re-priced", tuple(hosts),
                                                plan=self.plan, current=current, best=best, routine=routine),
                                       hosts, links, ends)
        return self._with_standbys(Decision(reason, tuple(hosts), current=current, best=best, routine=routine),
                                   hosts, links, ends)

    def _rerouted(self, gone: Sequence[str], hosts: list[Host], links: list[Link], ends: dict) -> Plan | None:
        """The plan in force with the lost hosts' segments on their standbys, when that plan fits."""
        if not gone or self.plan is None:
            return None
        segments = promoted(self.plan, self.standbys, gone)
        if segments is None:
            return None
        plan = evaluate(self.chain.units, segments, hosts, links, solver="standby", **ends)
        return plan if plan.feasible else None

    def _with_standbys(self, decision: Decision, hosts: list[Host], links: list[Link], ends: dict) -> Decision:
        """The decision with the plan in force's standbys, and whether they changed."""
        standbys: tuple[Segment, ...] = ()
        if self.policy.standbys and self.plan is not None:
            kept = {(s.start, s.end): s.host_id for s in self.standbys}
            standbys = choose_standbys(self.plan, self.chain.units, hosts, links, kept=kept, **ends)
        changed, self.standbys = standbys != self.standbys, standbys
        return replace(decision, standbys=standbys, standbys_changed=changed)


def placement_table(plan: Plan, assigned: Sequence[Assignment]) -> str:
    """The plan as a log reader wants it: one row per module, then the hops between hosts."""
    rows = [f"  {'module':<14} {'host':<16} {'compute ms':>10} {'memory MB':>10}"]
    rows += [f"  {a.module!s:<14} {a.host_id:<16} {a.expected_latency_s * 1e3:>10.2f} {a.memory_bytes / 1e6:>10.1f}"
             for a in assigned]
    stops = ["gateway", *(s.host_id for s in plan.segments), "gateway"]
    hops = ", ".join(f"{a}->{b} {t * 1e3:.2f}" for (a, b), t in zip(pairwise(stops), plan.transfer_s, strict=True))
    rows.append(f"  hops ms: {hops}")
    return "\n".join(rows)
