"""The coordinator's core on cases checkable by hand: joins, leaves (timeout and liveliness), hysteresis, memory.

No ROS: adverts are dataclasses and time is a number the test moves. The chain is four 1-GFLOP units of 100 bytes
with no KV cache (context 0), so a host of G GFLOP/s computes the whole chain in 4/G s and needs 400 bytes for it.
"""

from __future__ import annotations

import math

import pytest

from edge_lam.descriptors import Advert, Link, ModuleSpec
from edge_lam.fleet.coordination import Chain, Coordinator, Policy, placement_table, solver_memory
from edge_lam.placement.assignments import assignments
from edge_lam.placement.standbys import merged, promoted
from edge_lam.placement.types import Segment, Unit

UNITS = (*(Unit(ModuleSpec("blocks", i, i + 1), 1e9, 100, 0, 1000) for i in range(3)),
         Unit(ModuleSpec("head"), 1e9, 100, 0, 0, 8))
CHAIN = Chain(UNITS, num_layers=3, context_tokens=0)


def advert(host_id: str, gflops: float, memory: int = 1000, load: float = 0.0, total: int | None = None,
           links: tuple[Link, ...] = ()) -> Advert:
    return Advert(host_id, "edge", gflops, load, memory, memory if total is None else total, links)


def settled(*adverts: Advert, policy: Policy | None = None, chain: Chain = CHAIN) -> Coordinator:
    """A coordinator that heard ``adverts`` at t=0 and made its first plan at t=1 (settle_s 1)."""
    coordinator = Coordinator(chain, policy or Policy(host_timeout_s=10.0))
    for a in adverts:
        assert coordinator.advert(a, 0.0) is None
    decision = coordinator.tick(1.0)
    assert decision is not None and decision.plan is not None, decision
    return coordinator


def test_effective_compute_is_what_the_load_leaves_with_a_floor():
    assert advert("a", 10.0, load=0.5).effective_gflops == pytest.approx(5.0)
    assert advert("a", 10.0, load=1.0).effective_gflops == pytest.approx(0.5)  # 5 %: slow, not gone
    assert advert("a", 10.0, load=1.3).effective_gflops == pytest.approx(0.5)
    assert advert("a", 10.0, load=-0.2).effective_gflops == pytest.approx(10.0)  # never faster than measured
    with pytest.raises(ValueError, match="host_id"):
        advert("", 10.0)
    with pytest.raises(ValueError, match="compute"):
        advert("a", math.nan)


def test_memory_for_the_solver_credits_the_plans_modules_up_to_the_hosts_total():
    # loaded: 400 of 1000 in use by the plan's modules, 600 free -> all 1000 are the solver's to give
    assert solver_memory(advert("a", 10.0, memory=600, total=1000), held_bytes=400) == 1000
    # not loaded yet: free still counts the 400, so the credit must not count them again
    assert solver_memory(advert("a", 10.0, memory=1000, total=1000), held_bytes=400) == 1000
    # something else took 300: 300 free + 400 of ours
    assert solver_memory(advert("a", 10.0, memory=300, total=1000), held_bytes=400) == 700
    assert solver_memory(advert("a", 10.0, memory=300, total=1000), held_bytes=0) == 300


def test_the_first_plan_waits_for_the_settling_and_splits_over_two_hosts():
    link = Link("a", "b", 0.001, 8e6)  # 1 ms + 1000 bytes of hidden state at 1 MB/s = 2 ms per hop
    coordinator = Coordinator(CHAIN, Policy(settle_s=1.0))
    assert coordinator.advert(advert("a", 10.0, memory=200, links=(link,)), 0.0) is None
    assert coordinator.tick(0.5) is None
    assert coordinator.advert(advert("b", 10.0, memory=200), 0.6) is None  # still settling: no plan with one host
    assert coordinator.tick(0.9) is None
    decision = coordinator.tick(1.0)
    assert decision is not None and decision.plan is not None and decision.current is None
    # 200 bytes each: two units per host; 4 GFLOP at 10 GFLOP/s + one 2 ms hop; the gateway's hops are free
    assert {s.host_id for s in decision.plan.segments} == {"a", "b"}
    assert [s.end - s.start for s in decision.plan.segments] == [2, 2]
    assert decision.plan.expected_latency_s == pytest.approx(0.402)
    assert decision.plan.solver == "exact_dp" and coordinator.plan is decision.plan
    assert coordinator.tick(1.1) is None  # nothing changed since


def test_a_faster_host_joining_takes_the_modules_at_once():
    link = Link("a", "b", 0.001, 8e6)
    coordinator = settled(advert("a", 10.0, memory=200, links=(link,)), advert("b", 10.0, memory=200))
    decision = coordinator.advert(advert("c", 40.0), 1.5)
    assert decision is not None and decision.reason == "host 'c' joined"
    assert decision.plan is not None and decision.plan.segments == (Segment("c", 0, 4),)
    assert decision.plan.expected_latency_s == pytest.approx(0.1)
    assert decision.current is not None and decision.current.expected_latency_s == pytest.approx(0.402)


def test_a_host_joining_with_a_small_gain_moves_nothing():
    coordinator = settled(advert("p", 40.0))
    decision = coordinator.advert(advert("q", 42.0), 1.5)  # 4/42 against 4/40: 4.8 % faster
    assert decision is not None and decision.plan is None
    assert decision.best is not None and decision.best.segments == (Segment("q", 0, 4),)
    assert coordinator.plan is not None and coordinator.plan.segments == (Segment("p", 0, 4),)


def test_load_changes_move_modules_only_past_the_hysteresis_and_once_per_period():
    coordinator = settled(advert("p", 40.0), advert("q", 38.0))
    assert coordinator.plan is not None and coordinator.plan.segments == (Segment("p", 0, 4),)
    # p at 10 % load: 36 GFLOP/s, 0.1111 s; q is best at 0.1053 s, 5.3 % faster: below the 10 % margin
    assert coordinator.advert(advert("p", 40.0, load=0.1), 1.2) is None
    assert coordinator.tick(1.5) is None  # a look at most once per replan_period_s (1 s since the first plan)
    decision = coordinator.tick(2.0)
    assert decision is not None and decision.routine and decision.plan is None
    assert decision.current is not None and decision.current.expected_latency_s == pytest.approx(4 / 36)
    assert decision.best is not None and decision.best.expected_latency_s == pytest.approx(4 / 38)
    assert coordinator.tick(3.5) is None  # nothing changed since that look
    # p at 50 % load: 0.2 s against 0.1053 s, 47 % faster: move
    coordinator.advert(advert("p", 40.0, load=0.5), 3.6)
    decision = coordinator.tick(3.6)
    assert decision is not None and decision.plan is not None
    assert decision.plan.segments == (Segment("q", 0, 4),)
    assert decision.current is not None and decision.current.expected_latency_s == pytest.approx(0.2)


def test_the_plan_in_force_goes_out_again_re_priced_when_its_price_drifts_past_a_quarter():
    coordinator = settled(advert("p", 40.0))
    coordinator.advert(advert("p", 40.0, load=0.1), 1.5)  # 0.111 s against 0.1: 11 %, the plan's price stands
    decision = coordinator.tick(2.0)
    assert decision is not None and decision.plan is None
    coordinator.advert(advert("p", 40.0, load=0.5), 2.5)  # 0.2 s: no other host, so nothing moves, but the price
    decision = coordinator.tick(3.0)
    assert decision is not None and decision.plan is not None and "re-priced" in decision.reason
    assert decision.plan.segments == (Segment("p", 0, 4),) and decision.plan.solver == "exact_dp"
    assert decision.plan.expected_latency_s == pytest.approx(0.2) == coordinator.plan.expected_latency_s


def test_min_gain_s_holds_back_a_large_fraction_of_a_small_latency():
    coordinator = settled(advert("p", 40.0), advert("q", 38.0), policy=Policy(min_gain=0.0, min_gain_s=0.2))
    coordinator.advert(advert("p", 40.0, load=0.5), 1.5)  # 47 % faster on q, but only 95 ms
    decision = coordinator.tick(2.0)
    assert decision is not None and decision.best is not None and decision.best.segments == (Segment("q", 0, 4),)
    # nothing moves: the plan in force only goes out again at its new price (twice the old one)
    assert decision.plan is not None and decision.plan.segments == (Segment("p", 0, 4),)


def test_a_silent_host_is_gone_after_the_timeout_and_its_modules_move():
    coordinator = settled(advert("p", 40.0), advert("q", 20.0), policy=Policy(host_timeout_s=2.0))
    assert coordinator.plan is not None and coordinator.plan.segments == (Segment("p", 0, 4),)
    for t in (0.5, 1.0, 1.5, 2.0):  # q keeps advertising, p has been silent since t=0
        coordinator.advert(advert("q", 20.0), t)
        assert coordinator.tick(t) is None
    decision = coordinator.tick(2.01)
    assert decision is not None and decision.reason.startswith("host 'p' left, no advert for 2 s")
    assert decision.current is not None and not decision.current.feasible  # the plan in force lost its host
    assert decision.plan is not None and decision.plan.segments == (Segment("q", 0, 4),)
    assert coordinator.host_ids == ["q"]


def test_after_a_liveliness_loss_the_host_that_misses_three_adverts_is_gone_long_before_the_timeout():
    coordinator = settled(advert("p", 40.0), advert("q", 20.0))  # host_timeout_s 10
    for t in (1.5, 2.0, 2.5):  # both advertise every 0.5 s
        coordinator.advert(advert("p", 40.0), t)
        coordinator.advert(advert("q", 20.0), t)
    coordinator.liveliness_lost(2.7)  # p's writer is destroyed after its advert at 2.5
    coordinator.advert(advert("q", 20.0), 3.0)
    assert coordinator.tick(3.0) is None
    coordinator.advert(advert("q", 20.0), 3.5)
    assert coordinator.tick(4.0) is None  # 1.5 s after its last advert: p has missed three of its 0.5 s intervals
    decision = coordinator.tick(4.01)
    assert decision is not None and decision.reason.startswith("host 'p' left, silent since a writer lost liveliness")
    assert decision.plan is not None and decision.plan.segments == (Segment("q", 0, 4),)
    # q spoke after the loss, so the loss is accounted for: a later pause of q is judged by the timeout alone
    coordinator.advert(advert("q", 20.0), 4.0)
    assert coordinator.tick(6.0) is None and coordinator.host_ids == ["q"]


def test_a_liveliness_loss_of_a_writer_already_gone_removes_nobody():
    coordinator = settled(advert("p", 40.0), advert("q", 20.0))
    coordinator.liveliness_lost(1.2)
    for t in (1.5, 2.0, 2.5):
        coordinator.advert(advert("p", 40.0), t)
        coordinator.advert(advert("q", 20.0), t)
        assert coordinator.tick(t) is None
    assert coordinator.host_ids == ["p", "q"]


def test_no_feasible_plan_keeps_the_plan_in_force_and_says_why():
    coordinator = settled(advert("p", 40.0), advert("q", 20.0, memory=100))
    in_force = coordinator.plan
    # p's memory shrinks to 250 in all (the credit for our 400 bytes cannot exceed it): 350 for 400 bytes of units
    coordinator.advert(advert("p", 40.0, memory=250), 1.5)
    decision = coordinator.tick(2.0)
    assert decision is not None and decision.plan is None and decision.best is None
    assert "short by 50" in decision.error
    assert decision.current is not None and not decision.current.feasible
    assert coordinator.plan is in_force
    # q gets room: the broken plan in force moves there at the next look
    coordinator.advert(advert("q", 20.0, memory=1000), 2.5)
    decision = coordinator.tick(3.0)
    assert decision is not None and decision.plan is not None and not decision.error
    assert decision.plan.segments == (Segment("q", 0, 4),)


def test_the_plan_in_force_stays_feasible_on_the_memory_its_modules_use():
    coordinator = settled(advert("p", 40.0, memory=500), advert("q", 38.0, memory=500))
    assert coordinator.plan is not None and coordinator.plan.segments == (Segment("p", 0, 4),)
    # p loaded the 400 bytes: 100 free of 500. Without the credit the plan would look broken and move to q.
    coordinator.advert(advert("p", 40.0, memory=100, total=500), 1.5)
    decision = coordinator.tick(2.0)
    assert decision is not None and decision.plan is None and decision.current is not None
    assert decision.current.feasible and decision.current.expected_latency_s == pytest.approx(0.1)
    assert {h.host_id: h.memory_free_bytes for h in decision.hosts} == {"p": 500, "q": 500}


def test_a_named_gateway_prices_the_hops_in_and_out():
    slow = Link("g", "f", 0.05, 8e6)
    for gateway, latency in (("", 4 / 10), ("g", 0.05 + 8e-6 + 4 / 10 + 0.05 + 8e-6)):  # 8-byte token ids
        coordinator = settled(advert("g", 1.0, links=(slow,)), advert("f", 10.0),
                              chain=Chain(UNITS, 3, gateway_host=gateway, context_tokens=0))
        assert coordinator.plan is not None and coordinator.plan.segments == (Segment("f", 0, 4),)
        assert coordinator.plan.expected_latency_s == pytest.approx(latency)


def test_beyond_twelve_hosts_the_plan_says_it_came_from_the_heuristic():
    coordinator = settled(*(advert(f"h{i:02}", 10.0 + i) for i in range(13)))
    assert coordinator.plan is not None and coordinator.plan.solver.startswith("heuristic:")
    assert coordinator.plan.segments == (Segment("h12", 0, 4),)


def test_the_placement_table_lists_every_module_with_its_host_and_the_hops():
    link = Link("a", "b", 0.001, 8e6)
    coordinator = settled(advert("a", 10.0, memory=200, links=(link,)), advert("b", 10.0, memory=200))
    plan = coordinator.plan
    assert plan is not None
    table = placement_table(plan, assignments(plan, UNITS, coordinator.hosts(), CHAIN.num_layers))
    first, second = plan.segments
    assert f"blocks:0:2     {first.host_id}" in table and f"head           {second.host_id}" in table
    assert f"gateway->{first.host_id} 0.00, {first.host_id}->{second.host_id} 2.00" in table


def test_a_flood_of_invented_hosts_costs_one_look_per_interval_and_stops_at_max_hosts():
    from edge_lam.fleet.coordination import FleetFull

    coordinator = settled(advert("a", 10.0), policy=Policy(host_timeout_s=100.0, max_hosts=40,
                                                           min_look_interval_s=0.25))
    looks, refused = 0, 0
    for i in range(1500):
        now = 1.0 + i * 0.001  # 1,500 adverts in 1.5 s, each from a new host
        try:
            looks += coordinator.advert(advert(f"invented_{i}", 1.0), now) is not None
        except FleetFull:
            refused += 1
        looks += coordinator.tick(now) is not None
    assert len(coordinator.host_ids) == 40 and refused == 1500 - 39
    assert looks <= 1.5 / 0.25 + 1  # at most one look per interval, not one per join
    with pytest.raises(ValueError, match="host_id"):
        advert("h" * 65, 1.0)
    with pytest.raises(ValueError, match="links"):
        Advert("a", "edge", 1.0, 0.0, 1, 1, tuple(Link("a", f"p{i}", 0.0, 1.0) for i in range(257)))


# -- standby copies -----------------------------------------------------------------------------------------------


def test_every_plan_keeps_a_standby_copy_on_the_host_that_would_run_it_fastest():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0), advert("c", 10.0))
    assert coordinator.plan.segments == (Segment("a", 0, 4),)
    assert coordinator.standbys == (Segment("b", 0, 4),)


def test_a_lost_host_is_a_re_route_to_its_standby_and_a_new_copy_is_chosen():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0), advert("c", 10.0),
                          policy=Policy(host_timeout_s=10.0, min_gain=10.0))  # hysteresis: only a loss moves
    for t in (1.1, 1.2):  # b and c go on advertising every 0.1 s; a was killed after t=1
        coordinator.advert(advert("b", 20.0), t)
        coordinator.advert(advert("c", 10.0), t)
    for t in (0.7, 0.8, 0.9, 1.0):  # one late advert (the first interval) does not make its period long
        coordinator.advert(advert("a", 40.0), t)
    coordinator.liveliness_lost(1.3)
    coordinator.advert(advert("b", 20.0), 1.3)
    coordinator.advert(advert("c", 10.0), 1.3)
    decision = coordinator.tick(1.31)  # a silent 0.31 s: more than 3 of its 0.1 s intervals (the median)
    assert decision is not None and decision.plan is not None, decision
    assert "host 'a' left" in decision.reason and "standby copies take over" in decision.reason
    assert decision.plan.solver == "standby" and decision.plan.segments == (Segment("b", 0, 4),)
    assert decision.standbys == (Segment("c", 0, 4),) == coordinator.standbys


def test_a_live_host_a_little_late_is_not_taken_for_the_lost_one():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0))
    for t in (1.1, 1.2, 1.3):
        coordinator.advert(advert("a", 40.0), t)
        coordinator.advert(advert("b", 20.0), t)
    coordinator.liveliness_lost(1.35)  # another writer (say, a monitor) went; a's next advert is 0.15 s late
    assert coordinator.tick(1.45) is None
    coordinator.advert(advert("a", 40.0), 1.45)
    coordinator.advert(advert("b", 20.0), 1.45)
    assert coordinator.tick(1.8) is None and coordinator.host_ids == ["a", "b"]


def test_no_standby_where_no_other_host_has_room_and_then_a_loss_is_a_new_placement():
    bc = (Link("b", "c", 0.001, 8e6),)
    coordinator = settled(advert("a", 40.0, memory=400), advert("b", 20.0, memory=300, links=bc),
                          advert("c", 10.0, memory=300))
    # a holds all 400 bytes; b or c alone cannot hold a copy of the whole chain
    assert coordinator.plan.segments == (Segment("a", 0, 4),) and coordinator.standbys == ()
    coordinator.advert(advert("b", 20.0, memory=300, links=bc), 5.0)
    coordinator.advert(advert("c", 10.0, memory=300), 5.0)
    decision = coordinator.tick(11.0)  # a timed out
    assert decision is not None and decision.plan is not None and decision.plan.solver == "exact_dp"
    assert {s.host_id for s in decision.plan.segments} == {"b", "c"}


def test_standbys_off_by_policy():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0), policy=Policy(host_timeout_s=10.0, standbys=False))
    assert coordinator.standbys == ()


def test_a_host_joining_with_room_gets_a_copy_and_the_plan_in_force_goes_out_again_with_it():
    coordinator = settled(advert("a", 40.0), policy=Policy(host_timeout_s=10.0, min_gain=10.0))
    assert coordinator.standbys == ()
    decision = coordinator.advert(advert("b", 20.0), 2.0)
    assert decision is not None and decision.plan is None and decision.standbys_changed
    assert decision.standbys == (Segment("b", 0, 4),)
    coordinator.advert(advert("b", 20.0, load=0.1), 2.1)
    decision = coordinator.tick(3.5)  # a routine look: the copy stays where it is
    assert decision is not None and decision.plan is None and not decision.standbys_changed


def test_a_copy_on_a_neighbours_host_merges_into_its_range_when_promoted():
    ab = (Link("a", "b", 0.001, 8e6),)
    plan = settled(advert("a", 10.0, memory=200, links=ab), advert("b", 10.0, memory=200)).plan
    first, second = plan.segments
    assert promoted(plan, (Segment(second.host_id, first.start, first.end),), [first.host_id]) == \
        (Segment(second.host_id, 0, 4),)
    assert promoted(plan, (), [first.host_id]) is None  # no copy: no re-route
    assert merged([Segment("a", 0, 1), Segment("a", 1, 2), Segment("b", 2, 4)]) == \
        (Segment("a", 0, 2), Segment("b", 2, 4))


def test_a_gone_gateway_host_is_priced_free_instead_of_making_every_plan_infeasible():
    link = Link("gw", "a", 0.001, 8e6)
    chain = Chain(UNITS, num_layers=3, gateway_host="gw", context_tokens=0)
    coordinator = settled(advert("gw", 1.0, memory=0, links=(link,)), advert("a", 10.0,
                          links=(Link("a", "gw", 0.001, 8e6),)), advert("b", 5.0), chain=chain)
    coordinator.advert(advert("a", 10.0, links=(Link("a", "gw", 0.001, 8e6),)), 5.0)
    coordinator.advert(advert("b", 5.0), 5.0)
    decision = coordinator.tick(10.5)  # gw (the gateway's host) timed out
    assert decision is not None and not decision.error, decision
    assert "gateway host 'gw' not heard" in decision.reason


def test_one_writer_lost_removes_one_host_the_most_silent_even_when_another_is_late_too():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0), advert("c", 10.0))
    for t in (1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8):
        for host, gflops in (("a", 40.0), ("b", 20.0), ("c", 10.0)):
            if (host == "a" and t > 1.5) or (host == "b" and t > 1.6):
                continue  # a dies after 1.5; b, busy, is late from 1.6
            coordinator.advert(advert(host, gflops), t)
    coordinator.liveliness_lost(1.85)
    decision = coordinator.tick(2.05)  # both a (0.55 s) and b (0.45 s) are silent past three 0.1 s intervals
    assert decision is not None and decision.reason.startswith("host 'a' left"), decision
    assert coordinator.host_ids == ["b", "c"]
    assert coordinator.tick(2.2) is None and coordinator.host_ids == ["b", "c"]  # one writer was lost: one host


def test_a_writer_alive_again_was_a_missed_lease_and_removes_nobody():
    coordinator = settled(advert("a", 40.0), advert("b", 20.0))
    for t in (1.1, 1.2, 1.3):
        coordinator.advert(advert("a", 40.0), t)
        coordinator.advert(advert("b", 20.0), t)
    coordinator.liveliness_lost(1.6)  # a starved participant missed its lease ...
    coordinator.liveliness_regained()  # ... and asserted it again
    assert coordinator.tick(1.7) is None and coordinator.host_ids == ["a", "b"]
