"""The standby coordinator's pure parts: the latched plan turned back into the plan in force (segments, memory,
copies), a core given it re-routing a later loss to the copy, and when a standby takes over."""

from __future__ import annotations

import dataclasses

import pytest

from edge_lam.descriptors import Advert, Link, ModuleSpec
from edge_lam.fleet.coordination import Chain, Coordinator, Policy
from edge_lam.fleet.standby import TakeOver, adopted_plan, adopted_standbys, unit_ranges
from edge_lam.placement.assignments import Assignment, assignments
from edge_lam.placement.standbys import copies
from edge_lam.placement.types import Plan, Unit

UNITS = (Unit(ModuleSpec("embedding"), 1e8, 100, 0, 1000),
         *(Unit(ModuleSpec("blocks", i, i + 1), 1e9, 100, 10, 1000) for i in range(4)),
         Unit(ModuleSpec("head"), 1e9, 100, 0, 0, 8))
CHAIN = Chain(UNITS, num_layers=4, context_tokens=2)


def advert(host_id: str, gflops: float, memory: int = 400) -> Advert:
    links = tuple(Link(host_id, peer, 0.001, 1e9) for peer in "abcd" if peer != host_id)
    return Advert(host_id, "edge", gflops, 0.0, memory, memory, links)


FLEET = (advert("a", 40.0), advert("b", 30.0), advert("c", 20.0), advert("d", 10.0))


def planned() -> tuple[Coordinator, list[Assignment], list[Assignment]]:
    """A core's first plan over a..d (the chain's 680 bytes need two hosts, copies go on the other two), and the
    plan's module assignments and copies as the coordinator publishes them."""
    core = Coordinator(CHAIN, Policy(host_timeout_s=10.0))
    for a in FLEET:
        core.advert(a, 0.0)
    decision = core.tick(1.0)
    assert decision is not None and decision.plan is not None and decision.standbys, decision
    hosts = decision.hosts
    primaries = assignments(decision.plan, UNITS, hosts, CHAIN.num_layers)
    return core, primaries, copies(primaries, decision.plan, UNITS, decision.standbys)


def test_the_latched_plan_becomes_the_plan_in_force_with_its_memory_and_copies():
    core, primaries, standbys = planned()
    assert len(core.plan.segments) >= 2
    plan = adopted_plan(primaries, UNITS, CHAIN.context_tokens, core.plan.expected_latency_s, core.plan.solver)
    assert plan.segments == core.plan.segments
    assert plan.memory_bytes == core.plan.memory_bytes  # what the core credits each host with
    assert plan.compute_s == pytest.approx(core.plan.compute_s)
    assert plan.expected_latency_s == core.plan.expected_latency_s and plan.feasible
    assert adopted_standbys(standbys, plan, UNITS) == core.standbys


def test_an_early_exit_in_the_plan_is_not_a_unit_and_is_left_out():
    _, primaries, _ = planned()
    first = primaries[1]  # a blocks module after the embedding
    exit_here = Assignment(ModuleSpec("exit", first.module.layer_end, first.module.layer_end), first.host_id,
                           first.output_topic, first.output_topic, 288, 0.0)
    with_exit = [*primaries[:2], exit_here, *primaries[2:]]
    assert unit_ranges(with_exit, UNITS) == unit_ranges(primaries, UNITS)
    assert adopted_plan(with_exit, UNITS, 2, 1.0, "x").segments == adopted_plan(primaries, UNITS, 2, 1.0, "x").segments


def test_modules_that_are_not_the_models_chain_are_refused():
    _, primaries, _ = planned()
    with pytest.raises(ValueError, match="cover the units in order"):
        adopted_plan([primaries[0], *primaries[2:]], UNITS, 2, 1.0, "x")  # a gap
    with pytest.raises(ValueError, match="cover 1 of the model's 6 units"):
        adopted_plan(primaries[:1], UNITS, 2, 1.0, "x")
    with pytest.raises(ValueError, match="not match the model's units"):
        adopted_plan([dataclasses.replace(primaries[1], module=ModuleSpec("blocks", 0, 9))], UNITS, 2, 1.0, "x")
    twice = [dataclasses.replace(a, host_id="a" if i % 2 == 0 else "b") for i, a in enumerate(primaries)]
    with pytest.raises(ValueError, match="more than one range"):
        adopted_plan(twice, UNITS, 2, 1.0, "x")
    with pytest.raises(ValueError):
        adopted_plan([], UNITS, 2, 1.0, "x")


def standby_core() -> tuple[Coordinator, Plan]:
    """A standby's core: it heard the same adverts but never decided, and adopts what the active one published."""
    active, primaries, standbys = planned()
    core = Coordinator(CHAIN, Policy(host_timeout_s=10.0))
    for a in FLEET:
        core.advert(a, 0.0)
    plan = adopted_plan(primaries, UNITS, CHAIN.context_tokens, active.plan.expected_latency_s, active.plan.solver)
    core.adopt(plan, adopted_standbys(standbys, plan, UNITS))
    return core, plan


def test_a_core_given_the_latched_plan_re_routes_a_host_lost_with_the_coordinator_to_its_copy():
    core, plan = standby_core()
    lost = plan.segments[0]
    copy = next(s for s in core.standbys if (s.start, s.end) == (lost.start, lost.end))
    for tenth in range(1, 14):  # every host advertises every 0.1 s; the first segment's died after t=1
        for a in FLEET:
            if a.host_id != lost.host_id or tenth <= 10:
                core.advert(a, tenth / 10)
    core.liveliness_lost(1.3)
    decision = core.tick(1.35)  # the first look after taking over
    assert decision is not None and decision.plan is not None, decision
    assert f"host '{lost.host_id}' left" in decision.reason and decision.plan.solver == "standby"
    # the lost units run on the copy's host (merged with its neighbour's range when the copy sat there)
    assert any(s.host_id == copy.host_id and s.start <= lost.start and lost.end <= s.end
               for s in decision.plan.segments)


def test_a_core_given_the_plan_in_force_keeps_it_on_an_unchanged_fleet():
    core, _ = standby_core()
    decision = core.tick(1.5)
    assert decision is not None and decision.plan is None and decision.current.feasible, decision
    assert not decision.standbys_changed


def test_a_standby_takes_over_when_the_live_plan_writers_drop_to_none_and_never_steps_down():
    take = TakeOver(started_at=0.0, wait_s=1.3)
    assert take.writers(1, 1.0) is None and take.tick(5.0) is None  # the active coordinator lives
    assert take.writers(2, 5.0) is None and take.writers(1, 5.1) is None  # one of two gone: one still publishes
    assert take.writers(0, 5.2).startswith("the active coordinator's plan writer lost liveliness") and take.active
    assert take.writers(0, 5.3) is None and take.writers(1, 5.4) is None and take.tick(9.0) is None and take.active


def test_a_standby_takes_over_only_when_the_loss_lasts_confirm_s():
    take = TakeOver(started_at=0.0, wait_s=1.3, confirm_s=0.1)
    assert take.writers(1, 1.0) is None
    assert take.writers(0, 2.0) is None and take.tick(2.05) is None and not take.active  # not yet confirmed
    assert take.writers(1, 2.08) is None and take.tick(3.0) is None and not take.active  # alive again: it stays
    # Past confirm_s, one more tick: a standby starved itself may tick before its middleware delivers the news.
    assert take.writers(0, 4.0) is None and take.tick(4.11) is None
    assert take.writers(1, 4.12) is None and take.tick(4.21) is None and not take.active
    assert take.writers(0, 5.0) is None and take.tick(5.11) is None
    assert take.tick(5.21) == "the active coordinator's plan writer lost liveliness and stayed lost for 0.21 s"
    assert take.active


def test_a_standby_with_no_live_plan_writer_after_the_wait_takes_over_on_its_own():
    take = TakeOver(started_at=10.0, wait_s=1.3)
    assert take.tick(11.2) is None and not take.active
    assert take.tick(11.3) == "no live plan writer within 1.3 s of starting, and none in the graph" and take.active
    assert take.tick(12.0) is None
    assert TakeOver(0.0, 1.3, active=True).tick(5.0) is None  # started active: nothing to take


def test_a_standby_that_has_not_heard_a_listed_writers_liveliness_yet_does_not_take_over():
    """Seen in bench/failover.py on a loaded host: a new standby had the latched plan but not yet the liveliness
    event of the active coordinator's writer when its wait ended, took over, and two coordinators published."""
    take = TakeOver(started_at=10.0, wait_s=1.3)
    assert take.tick(11.3, writers_listed=1) is None and take.tick(30.0, writers_listed=1) is None
    assert not take.active
    assert take.writers(1, 30.5) is None  # heard at last: from now on, liveliness decides
    assert take.writers(0, 31.0).startswith("the active coordinator's plan writer lost") and take.active
    late = TakeOver(started_at=10.0, wait_s=1.3)
    assert late.tick(12.0, writers_listed=1) is None
    assert late.tick(25.0, writers_listed=0).startswith("no live plan writer")  # the dead writer left the graph
