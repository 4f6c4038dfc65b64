"""Host agents: the pure cores (load, memory, plan bookkeeping, link probes), then real agent processes driven over
DDS: adverts with scaled compute and links, a plan that loads a shard which serves packets and a newer plan that
unloads it, and the load_module / unload_module services, which refuse bad requests."""

from __future__ import annotations

import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from edge_lam_msgs.msg import ChainPacket, ComputeAdvert, ModuleAssignment, PlacementPlan, TensorList, Vocabulary
from edge_lam_msgs.srv import LoadModule, UnloadModule
from parameter_calls import set_parameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from std_msgs.msg import Header

import edge_lam
from conftest import Processes, finish
from edge_lam.chain.shard import ShardCore
from edge_lam.container.parameters import YamlBounds, yaml_parameters
from edge_lam.container.services import component_kind
from edge_lam.descriptors import Host, Link, ModuleSpec
from edge_lam.fleet.host_measurement import cpu_sample, load_between, mem_available_bytes
from edge_lam.fleet.plan_following import PlanOrder, ShardLoad, plan_changes
from edge_lam.link.probing import (
    BULK_TARGET_S,
    MAX_BULK_BYTES,
    MIN_BULK_BYTES,
    ROUNDS_KEPT,
    SMALL_PROBE_BYTES,
    LinkProber,
    Round,
    bulk_bytes_for,
    parse_emulated_links,
)
from edge_lam.model.adapters import save_adapter
from edge_lam.model.costs import llama_units
from edge_lam.model.loading import load_model
from edge_lam.model.sampling import Sampling
from edge_lam.placement.assignments import ShardGroup, assignments
from edge_lam.placement.solver import solve
from edge_lam.ros.qos import ADVERTS, LATCHED, TENSORS, VOCABULARIES
from edge_lam.training.adapters import LoraSettings
from edge_lam.wire.fleet import to_assignment_msg
from edge_lam.wire.tensors import to_msg, to_torch
from ros_client import RosClient

SMOLLM2 = {"hidden_size": 576, "num_layers": 30, "vocab_size": 49152, "intermediate_size": 1536, "num_heads": 9,
           "num_kv_heads": 3}
WHOLE_MODEL = ("embedding", "blocks_0_30", "head")
LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"

# -- pure cores --------------------------------------------------------------------------------------------------


def stat(user: int, system: int, idle: int, iowait: int = 0) -> str:
    return f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n"


def test_load_is_the_busy_share_of_all_cores_less_the_agents_own():
    earlier = cpu_sample(stat(100, 100, 800, 50), own_s=1.0, ticks_per_s=100)
    # 200 ticks pass on all cores (2 s of CPU): 120 busy, of which 0.4 s are the agent's own
    later = cpu_sample(stat(200, 120, 860, 70), own_s=1.4, ticks_per_s=100)
    assert later.total_s - earlier.total_s == pytest.approx(2.0)
    assert load_between(earlier, later) == pytest.approx((1.2 - 0.4) / 2.0)
    assert load_between(earlier, cpu_sample(stat(200, 120, 860, 70), own_s=9.0, ticks_per_s=100)) == 0.0
    assert load_between(earlier, earlier) == 0.0
    with pytest.raises(ValueError, match="cpu"):
        cpu_sample("intr 1 2\n", 0.0, 100)


def test_memory_available_comes_from_meminfo():
    text = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n"
    assert mem_available_bytes(text) == 20_000_000 * 1024
    with pytest.raises(ValueError, match="MemAvailable"):
        mem_available_bytes("MemTotal: 1 kB\n")


def test_plans_older_than_the_newest_seen_are_ignored():
    order = PlanOrder()
    assert order.accept("coord_a", 3, stamp_ns=100)
    assert not order.accept("coord_a", 3, stamp_ns=200)  # the same version again (a latched replay)
    assert not order.accept("coord_a", 2, stamp_ns=300)
    assert order.accept("coord_a", 4, stamp_ns=150)
    assert not order.accept("coord_b", 9, stamp_ns=120)  # another coordinator's plan, made earlier
    assert order.accept("coord_b", 0, stamp_ns=400)  # a standby taking over, with its own count
    assert not order.accept("coord_a", 5, stamp_ns=390)


def shard(modules: tuple[str, ...], start: str, end: str, memory: int = 10, model: str = "m") -> ShardLoad:
    return ShardLoad(ShardGroup(tuple(ModuleSpec.parse(m) for m in modules), start, end, memory), model)


def test_a_new_plan_touches_only_the_shards_that_change():
    head = shard(("blocks:20:30", "head"), "chain/hidden_20", "chain/output")
    embed = shard(("embedding", "blocks:0:10"), "chain/input", "chain/hidden_10")
    running = {head.name: head, embed.name: embed}
    # head stays (only its memory estimate changed), embed goes, a middle range comes
    middle = shard(("blocks:10:20",), "chain/hidden_10", "chain/hidden_20")
    head_again = shard(("blocks:20:30", "head"), "chain/hidden_20", "chain/output", memory=99)
    changes = plan_changes(running, [middle, head_again])
    assert changes.unload == (embed.name,)
    assert changes.load == (middle,)
    assert changes.keep == (head_again,)
    assert head.module_ids == ("blocks_20_30", "head")
    # the same modules from another model, or to other topics, are a different shard
    other = shard(("blocks:20:30", "head"), "chain/hidden_20", "chain/output", model="other")
    assert plan_changes(running, [other]).load == (other,)
    assert set(plan_changes(running, [other]).unload) == {head.name, embed.name}
    assert plan_changes(running, []).unload == (head.name, embed.name)


def test_emulated_links_parse_and_bad_ones_are_refused():
    assert parse_emulated_links(["edge_0:0.02:100e6", "tb3:1:2"], "me") == {
        "edge_0": Link("me", "edge_0", 0.02, 1e8), "tb3": Link("me", "tb3", 1.0, 2.0)}
    for bad in (["edge_0:0.02"], ["edge_0:x:1e6"], [":0.1:1e6"], ["a:-1:1e6"], ["a:0.1:0"], ["a:1:1", "a:2:2"]):
        with pytest.raises(ValueError, match="emulated link"):
            parse_emulated_links(bad)


def probe_round(prober: LinkProber, peer: str, start_s: float, small_rtt_s: float, bulk_rtt_s: float,
                seq: int = 0) -> int:
    """One whole round answered after the given round trips; the bulk probe's size."""
    prober.sent(peer, seq=seq, now_s=start_s)
    assert prober.answered(peer, seq=seq, now_s=start_s + small_rtt_s, measured_at_ns=0)
    nbytes = prober.sent(peer, seq=seq + 1, now_s=start_s + small_rtt_s, bulk=True)
    prober.answered(peer, seq=seq + 1, now_s=start_s + small_rtt_s + bulk_rtt_s, measured_at_ns=seq)
    return nbytes


def test_a_probe_round_gives_latency_from_the_small_trip_and_bandwidth_from_the_bulk_one():
    prober = LinkProber(1.0, rng=random.Random(0))
    assert prober.due("b", 0.0)
    assert prober.sent("b", seq=1, now_s=10.0) == SMALL_PROBE_BYTES
    assert not prober.due("b", 10.5)
    assert not prober.answered("b", seq=99, now_s=10.01, measured_at_ns=0)  # not the probe in flight
    assert prober.answered("b", seq=1, now_s=10.002, measured_at_ns=0)  # small answered: bulk next
    assert prober.sent("b", seq=2, now_s=10.002, bulk=True) == MIN_BULK_BYTES  # nothing known yet: the least
    assert not prober.answered("b", seq=2, now_s=10.012, measured_at_ns=7)
    measure = prober.measures["b"]
    assert measure.latency_s == pytest.approx(0.001)
    assert measure.bandwidth_bps == pytest.approx((MIN_BULK_BYTES - SMALL_PROBE_BYTES) * 8 / 0.008)
    assert prober.measured_at_ns["b"] == 7
    # the next round comes 0.5 to 1.5 periods later, never at once
    assert not prober.due("b", 10.012 + 0.49) and prober.due("b", 10.012 + 1.51)
    prober.sent("b", seq=3, now_s=20.0)
    assert prober.due("b", 21.5)  # unanswered past the time-out: a new round may start
    prober.forget("b")
    assert "b" not in prober.measures and prober.due("b", 0.0)


def test_the_bulk_probe_is_sized_for_the_link_as_last_measured():
    assert bulk_bytes_for(None) == MIN_BULK_BYTES
    assert bulk_bytes_for(Link("a", "b", 0.05, 5e6)) == int(5e6 * BULK_TARGET_S / 8)  # 31 kB: 50 ms at 5 Mbit/s
    assert bulk_bytes_for(Link("a", "b", 0.0, 1e9)) == MAX_BULK_BYTES
    assert bulk_bytes_for(Link("a", "b", 0.0, 1e5)) == MIN_BULK_BYTES
    prober = LinkProber(1.0, rng=random.Random(0))
    first = probe_round(prober, "b", 0.0, 0.001, 0.002)  # 16 kB in 1 ms: 130 Mbit/s
    second = probe_round(prober, "b", 2.0, 0.001, 0.002, seq=2)
    assert first == MIN_BULK_BYTES and second == bulk_bytes_for(prober.measures["b"]) > first


def test_the_best_of_the_last_rounds_counts_and_noise_does_not():
    prober = LinkProber(1.0, rng=random.Random(0))
    rounds = [(0.002, 0.010), (0.004, 0.030), (0.002, 0.012), (0.003, 0.010)]  # some queued behind other traffic
    sizes = [probe_round(prober, "b", seq * 2.0, small, bulk, seq=seq * 2) for seq, (small, bulk) in enumerate(rounds)]
    measure = prober.measures["b"]
    assert measure.latency_s == pytest.approx(0.001)  # the least small round trip
    # the widest round, each priced beside the least small round trip, whatever its own small trip took
    assert measure.bandwidth_bps == pytest.approx(max(Round(small, bulk, n).bandwidth_bps(0.002)
                                                      for (small, bulk), n in zip(rounds, sizes, strict=True)))


def test_a_faster_link_shows_at_once_and_a_slower_one_once_the_window_has_moved_on():
    prober = LinkProber(1.0, rng=random.Random(0))
    for seq in range(ROUNDS_KEPT):
        probe_round(prober, "b", seq * 2.0, 0.002, 0.003, seq=seq * 2)
    assert prober.measures["b"].latency_s == pytest.approx(0.001)
    for seq in range(ROUNDS_KEPT - 1):  # a busy agent answers late for a few rounds: not a slower link
        probe_round(prober, "b", 20.0 + seq * 2.0, 0.030, 0.040, seq=20 + seq * 2)
        assert prober.measures["b"].latency_s == pytest.approx(0.001)
    probe_round(prober, "b", 40.0, 0.102, 0.104, seq=40)  # every kept round slower: the link reads slower
    assert prober.measures["b"].latency_s == pytest.approx(0.015)
    probe_round(prober, "b", 42.0, 0.002, 0.003, seq=42)
    assert prober.measures["b"].latency_s == pytest.approx(0.001)  # faster again: the least round trip wins at once


def test_a_bulk_probe_given_up_bounds_the_bandwidth_so_the_next_one_fits_the_link():
    prober = LinkProber(1.0, rng=random.Random(0))
    for seq in range(3):
        probe_round(prober, "b", seq * 2.0, 0.002, 0.002 + MAX_BULK_BYTES * 8 / 1e9, seq=seq * 2)
    assert prober.bulk_bytes("b") == MAX_BULK_BYTES
    for start in (10.0, 20.0):  # 256 kB no longer cross within a period: the link dropped to 1 Mbit/s
        prober.sent("b", seq=int(start), now_s=start)
        prober.answered("b", seq=int(start), now_s=start + 0.002, measured_at_ns=0)
        prober.sent("b", seq=int(start) + 1, now_s=start + 0.002, bulk=True)
        assert prober.due("b", start + 1.1)
    prober.sent("b", seq=30, now_s=30.0)  # the next round records the one given up
    # Each counts as taking the time-out (1 s): 2 Mbit/s at most. Once the fast rounds have left the window, that
    # is the estimate, and the next bulk probe is sized for it.
    assert prober.bulk_bytes("b") == MAX_BULK_BYTES
    for start in (40.0, 50.0, 60.0):
        prober.sent("b", seq=int(start), now_s=start)
        prober.answered("b", seq=int(start), now_s=start + 0.002, measured_at_ns=0)
        prober.sent("b", seq=int(start) + 1, now_s=start + 0.002, bulk=True)
    prober.sent("b", seq=70, now_s=70.0)
    assert prober.measures["b"].bandwidth_bps == pytest.approx(Round(0.002, 1.0, MAX_BULK_BYTES).bandwidth_bps(0.002))
    assert prober.bulk_bytes("b") == MIN_BULK_BYTES


def test_yaml_parameters_become_overrides_and_bad_yaml_is_refused():
    parameters = yaml_parameters("num_threads: 2\nmodel: {name: x}\nwords: [a, b]\n")
    assert {p.name: p.value for p in parameters} == {"num_threads": 2, "model.name": "x", "words": ["a", "b"]}
    assert yaml_parameters("") == []
    for bad, why in (("a: [", "not valid YAML"), ("- 1", "mapping"), ("a: [1, x]", "'a'"), ("a:", "'a'")):
        with pytest.raises(ValueError, match=why):
            yaml_parameters(bad)


def test_yaml_parameters_are_bounded_before_anything_is_built():
    """Crash 3 of the findings: a recursive alias looped until memory ran out; an alias bomb expanded to a million
    parameters. Aliases, size, depth and count are refused, with the bound named, before values are built."""
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(6))
    bounds = YamlBounds(max_bytes=1000, max_depth=3, max_parameters=4)
    for bad, why in (("a: &a {b: *a, c: 1}", "aliases"), (bomb, "aliases"), ("x: &x 1\ny: 2", "aliases"),
                     ("a: '" + "x" * 1000 + "'", "bytes"), ("a: {b: {c: {d: 1}}}", "deeper than 3"),
                     ("a: [[[[1]]]]", "deeper than 3"), ("{a: 1, b: 2, c: 3, d: 4, e: 5}", "more than 4")):
        with pytest.raises(ValueError, match=why):
            yaml_parameters(bad, bounds)
    assert len(yaml_parameters("{a: 1, b: {c: [1, 2]}, d: x, e: 2.5}", bounds)) == 4
    with pytest.raises(ValueError, match="aliases"):
        yaml_parameters(bomb)  # the default bounds too


# -- agents over DDS ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def agent_imports_this_checkout(monkeypatch):
    """Agent processes started with ``python -m`` import the same edge_lam as the tests."""
    source = str(pathlib.Path(edge_lam.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))


def start_agent(processes: Processes, namespace: str, host_id: str, *params: str,
                command: tuple = (sys.executable, "-m", "edge_lam.fleet.host_agent_node")) -> subprocess.Popen:
    args = ["-r", f"__ns:=/{namespace}", "-r", f"__node:=agent_{host_id}", "-p", f"host_id:={host_id}",
            "-p", f"adverts_topic:=/{namespace}/adverts", "-p", f"plan_topic:=/{namespace}/plan"]
    for param in params:
        args += ["-p", param]
    return processes.start(*command, "--ros-args", *args)


def wait(client: RosClient, done, timeout_s: float, *agents: subprocess.Popen) -> None:
    """Spin until ``done()``; fail with the output of an agent that ended, or on the time-out."""
    def settled() -> bool:
        return done() or any(a.poll() is not None for a in agents)

    finished = client.spin_until(settled, timeout_s)
    for agent in agents:
        if agent.poll() is not None:
            pytest.fail(f"an agent ended (rc {agent.returncode}):\n{finish(agent, 5)[1]}")
    assert finished, f"timed out after {timeout_s} s"


def latest(adverts: list[ComputeAdvert], host_id: str) -> ComputeAdvert | None:
    return next((a for a in reversed(adverts) if a.host_id == host_id), None)


def status(arrays: list[DiagnosticArray], name: str) -> DiagnosticStatus | None:
    """The newest status of that name among the arrays received."""
    return next((s for a in reversed(arrays) for s in a.status if s.name == name), None)


@pytest.fixture
def client():
    namespace = f"agent_{uuid.uuid4().hex[:8]}"
    ros = RosClient("host_agent_test", namespace)
    yield ros, namespace
    ros.close()


def test_agents_advertise_scaled_compute_memory_and_links(processes, client):
    ros, ns = client
    adverts = ros.collect(ComputeAdvert, f"/{ns}/adverts", ADVERTS)
    fast = start_agent(processes, ns, "fast", "role:=edge", "link_probe_period_s:=1.0")
    # one after the other: on two cores, an agent measuring while the other starts up would measure the contention
    wait(ros, lambda: latest(adverts, "fast") is not None, 60, fast)
    slow = start_agent(processes, ns, "slow", "role:=robot", "compute_scale:=0.25", "battery_fraction:=0.8",
                       "memory_limit_bytes:=3000000000", "emulated_links:=['fast:0.02:100e6']")

    def measured() -> bool:
        advert = latest(adverts, "fast")
        return advert is not None and latest(adverts, "slow") is not None and \
            any(link.peer_host_id == "slow" for link in advert.links)

    wait(ros, measured, 60, fast, slow)
    ros.spin_for(1.0)  # a few more rounds: the slow agent hears the fast one and still keeps its emulated link
    f, s = latest(adverts, "fast"), latest(adverts, "slow")
    assert 2.0 < f.compute_gflops / s.compute_gflops < 8.0, (f.compute_gflops, s.compute_gflops)
    # memory bandwidth beside it, scaled alike (memory passes are noisier than matmuls under load: wider bounds)
    assert s.memory_bandwidth_gbps > 0 and 1.5 < f.memory_bandwidth_gbps / s.memory_bandwidth_gbps < 12.0, \
        (f.memory_bandwidth_gbps, s.memory_bandwidth_gbps)
    assert f.role == ComputeAdvert.ROLE_EDGE and s.role == ComputeAdvert.ROLE_ROBOT
    assert math.isnan(f.battery_fraction) and s.battery_fraction == pytest.approx(0.8)
    assert s.memory_total_bytes == s.memory_free_bytes == 3_000_000_000
    assert 0 < f.memory_total_bytes == f.memory_free_bytes
    assert 0.0 <= f.load <= 1.0 and list(f.modules_hosted) == list(s.modules_hosted) == []
    assert [(k.peer_host_id, k.latency_s, k.bandwidth_bps) for k in s.links] == [("fast", 0.02, 100e6)]
    (link,) = f.links
    assert 0.0 < link.latency_s < 0.5 and link.bandwidth_bps > 1e6, (link.latency_s, link.bandwidth_bps)
    assert link.measured_at.sec > 0


def whole_model_plan(host_id: str, version: int, plan_id: str, ros: RosClient, model_id: str = "",
                     weight_dtype: str = "") -> PlacementPlan:
    """All of SmolLM2 on one host, through the solver and assignments like the coordinator's plans."""
    units = llama_units(**SMOLLM2)
    hosts = [Host(host_id, gflops=10.0, memory_free_bytes=4 * 2**30)]
    solved = solve(units, hosts, [], source_host=host_id, sink_host=host_id, context_tokens=256)
    plan = PlacementPlan(plan_id=plan_id, version=version, model_id=model_id, solver=solved.solver,
                         weight_dtype=weight_dtype,
                         expected_latency_s=solved.expected_latency_s,
                         modules=[to_assignment_msg(a) for a in assignments(solved, units, hosts, 30)])
    plan.header.stamp = ros.node.get_clock().now().to_msg()
    return plan


def test_a_plan_loads_a_shard_that_serves_and_a_newer_plan_unloads_it(processes, client, tmp_path):
    ros, ns = client
    adverts = ros.collect(ComputeAdvert, f"/{ns}/adverts", ADVERTS)
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
    output = ros.collect(ChainPacket, "chain/output", TENSORS)
    logs = ros.collect_logs()
    adapter = tmp_path / "fleet.safetensors"  # LoRA on one layer, B zero: what training starts from
    save_adapter(adapter, {"layers.3.self_attn.q_proj.lora_A.weight": torch.ones(8, 576),
                           "layers.3.self_attn.q_proj.lora_B.weight": torch.zeros(576, 8)},
                 LoraSettings(8, 16.0, ("q_proj",)), "smollm2-135m-instruct")
    agent = start_agent(processes, ns, "solo", "memory_limit_bytes:=4000000000", f"adapters:=[fleet={adapter}]")
    plans = ros.publisher(PlacementPlan, f"/{ns}/plan", LATCHED)
    plan_id = uuid.uuid4().hex
    plan = whole_model_plan("solo", 1, plan_id, ros)
    assert [m.module_id for m in plan.modules] == list(WHOLE_MODEL)
    plans.publish(plan)

    def hosting(modules: tuple[str, ...]):
        return lambda: (a := latest(adverts, "solo")) is not None and tuple(a.modules_hosted) == modules

    wait(ros, hosting(WHOLE_MODEL), 60, agent)
    advert = latest(adverts, "solo")
    assert advert.memory_free_bytes == 4_000_000_000 - sum(m.memory_bytes for m in plan.modules)
    shard_name = f"/{ns}/shard_embedding_blocks_0_30_head"
    wait(ros, lambda: (s := status(diagnostics, shard_name)) is not None and s.level == DiagnosticStatus.OK, 10)
    assert status(diagnostics, f"/{ns}/agent_solo").level == DiagnosticStatus.OK

    chain = ros.publisher(ChainPacket, "chain/input", TENSORS)
    chain.publish(ChainPacket(session_id="probe-1", release=True))
    step = ChainPacket(request_id="r1", session_id="s1", reset=True,
                       tensors=[to_msg(torch.tensor([[1, 504, 3953]]), "input_ids")])
    chain.publish(step)
    wait(ros, lambda: len(output) >= 2, 30, agent)
    released, answered = output[:2]
    assert released.release and released.session_id == "probe-1"
    assert answered.error_code == ChainPacket.ERROR_NONE, answered.error_message
    (next_token,) = answered.tensors
    assert next_token.name == "next_token" and 0 <= int(to_torch(next_token).item()) < SMOLLM2["vocab_size"]
    assert {t.host_id for t in answered.timings} == {"solo"}

    # the agent's adapters reach the plan's shard: a step names one it holds, or one it does not
    for name in ("fleet", "kitchen"):
        step.request_id, step.options.adapter = name, name
        chain.publish(step)
    wait(ros, lambda: len(output) >= 4, 30, agent)
    fleet, kitchen = output[2:4]
    assert fleet.error_code == ChainPacket.ERROR_NONE, fleet.error_message
    assert to_torch(fleet.tensors[0]).item() == to_torch(next_token).item()  # B is zero: the base answer
    assert kitchen.error_code == ChainPacket.ERROR_BAD_INPUT and "adapter 'kitchen' is not held" in \
        kitchen.error_message

    # the same modules in int8: the shard is loaded anew in it and answers as the int8 model does
    plans.publish(whole_model_plan("solo", 2, plan_id, ros, weight_dtype="int8"))
    wait(ros, lambda: any("of int8 weights" in log.msg and log.name.endswith("shard_embedding_blocks_0_30_head")
                          for log in logs), 60, agent)
    ids = torch.tensor([[1, 504, 3953]])
    int8 = ShardCore(load_model("smollm2-135m-instruct", weight_dtype="int8"),
                     [ModuleSpec.parse(m) for m in ("embedding", "blocks:0:30", "head")])
    expected = int(int8.step({"input_ids": ids}, "s", 0, True, Sampling(), 0).tensors["next_token"][0])
    output.clear()
    deadline = time.monotonic() + 60
    while not output and time.monotonic() < deadline:  # until the new shard has matched this publisher
        chain.publish(ChainPacket(request_id="r2", session_id="s2", reset=True, tensors=[to_msg(ids, "input_ids")]))
        ros.spin_until(lambda: bool(output), 2.0)
    assert output[0].error_code == ChainPacket.ERROR_NONE, output[0].error_message
    assert int(to_torch(output[0].tensors[0]).item()) == expected

    elsewhere = whole_model_plan("other_host", 3, plan_id, ros)
    plans.publish(elsewhere)
    wait(ros, hosting(()), 30, agent)
    assert latest(adverts, "solo").memory_free_bytes == 4_000_000_000
    diagnostics.clear()
    wait(ros, lambda: status(diagnostics, f"/{ns}/agent_solo") is not None, 5, agent)
    assert status(diagnostics, shard_name) is None

    # a plan naming a model that is not a prepared one (an id or a folder of the sender's choosing): the agent
    # says on /diagnostics that it cannot follow it, loads nothing and carries on
    for version, model_id in ((4, "no-such-model"), (5, "/tmp")):
        diagnostics.clear()
        plans.publish(whole_model_plan("solo", version, plan_id, ros, model_id=model_id))
        refused = f"model '{model_id}' is not one this host serves"
        wait(ros, lambda refused=refused: (s := status(diagnostics, f"/{ns}/agent_solo")) is not None
             and s.level == DiagnosticStatus.WARN and refused in s.message, 30, agent)
        assert status(diagnostics, shard_name) is None
    adverts.clear()
    wait(ros, lambda: latest(adverts, "solo") is not None, 5, agent)
    assert list(latest(adverts, "solo").modules_hosted) == []


def test_an_agent_stopped_while_it_loads_a_plans_shard_ends_cleanly(processes, client):
    """Ctrl-C while the loader thread builds a shard: the build is waited for and discarded (or abandoned after a
    second), and the agent exits 0 (a thread left inside torch when the interpreter finalised used to abort it)."""
    ros, ns = client
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics", QoSProfile(depth=50))
    agent = start_agent(processes, ns, "stop", "diagnostics_period_s:=0.1", command=(LIB / "host_agent",))
    plans = ros.publisher(PlacementPlan, f"/{ns}/plan", LATCHED, timeout_s=60)
    plans.publish(whole_model_plan("stop", 1, uuid.uuid4().hex, ros))
    shard_name = f"/{ns}/shard_embedding_blocks_0_30_head"
    wait(ros, lambda: (s := status(diagnostics, shard_name)) is not None and s.level == DiagnosticStatus.WARN, 60,
         agent)  # loading: the model takes seconds to load
    agent.send_signal(signal.SIGINT)
    rc, output = finish(agent, timeout_s=20)
    assert rc == 0, output
    # the build is waited for briefly, then thrown away or abandoned: either way the exit is clean
    assert "shard_embedding_blocks_0_30_head was still loading when the container stopped: discarded" in output or \
        "a component still building after 1 s is abandoned" in output


def call(ros: RosClient, service, request, agent: subprocess.Popen):
    future = service.call_async(request)
    wait(ros, future.done, 60, agent)
    return future.result()


def load_request(kind: int, module_id: str = "", layers: tuple[int, int] = (0, 0), topics: tuple[str, str] = ("", ""),
                 yaml: str = "", memory_bytes: int = 0) -> LoadModule.Request:
    module = ModuleAssignment(module_id=module_id, kind=kind, layer_start=layers[0], layer_end=layers[1],
                              input_topic=topics[0], output_topic=topics[1], memory_bytes=memory_bytes)
    return LoadModule.Request(module=module, parameters_yaml=yaml)


def test_load_module_and_unload_module_serve_good_requests_and_refuse_bad_ones(processes, client):
    ros, ns = client
    adverts = ros.collect(ComputeAdvert, f"/{ns}/adverts", ADVERTS)
    vocabularies = ros.collect(Vocabulary, "tokens/odometry/vocabulary", VOCABULARIES)
    agent = start_agent(processes, ns, "svc", "memory_limit_bytes:=2000000000")
    load = ros.node.create_client(LoadModule, f"/{ns}/agent_svc/load_module")
    unload = ros.node.create_client(UnloadModule, f"/{ns}/agent_svc/unload_module")
    wait(ros, lambda: load.service_is_ready() and unload.service_is_ready(), 60, agent)
    # A service is ready once its request reader matched this client; its response writer may match this client's
    # reader later, and an answer sent before is lost (a clean clone's run lost one): ask something harmless until
    # an answer comes.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        future = unload.call_async(UnloadModule.Request(module_id="warm_up"))
        if ros.spin_until(future.done, 5.0):
            break
        unload.remove_pending_request(future)
    blocks = {"module_id": "blocks_0_2", "layers": (0, 2), "topics": ("chain/hidden_0", "chain/hidden_2")}

    refused = {
        "kind 9": load_request(9, "x"),
        "valid YAML": load_request(ModuleAssignment.KIND_BLOCKS, **blocks, yaml="a: ["),
        "mapping": load_request(ModuleAssignment.KIND_BLOCKS, **blocks, yaml="- 1"),
        "aliases": load_request(ModuleAssignment.KIND_BLOCKS, **blocks, yaml="a: &a {b: *a, c: 1}"),
        "names no component": load_request(ModuleAssignment.KIND_ENCODER, "warp_drive"),
        "does not match": load_request(ModuleAssignment.KIND_BLOCKS, "blocks_0_3", (0, 2), blocks["topics"]),
        "bad layer range": load_request(ModuleAssignment.KIND_BLOCKS, "", (4, 2), blocks["topics"]),
        "needs an input_topic": load_request(ModuleAssignment.KIND_BLOCKS, "blocks_0_2", (0, 2)),
    }
    for why, request in refused.items():
        answer = call(ros, load, request, agent)
        assert not answer.success and why in answer.message, (why, answer.message)
    answer = call(ros, unload, UnloadModule.Request(module_id="blocks_0_2"), agent)
    assert not answer.success and "not hosted" in answer.message
    # the YAML bounds are live: `ros2 param set` holds the next request to the new bound
    good = load_request(ModuleAssignment.KIND_BLOCKS, **blocks, yaml="num_threads: 1", memory_bytes=1000)
    assert all(r.successful for r in set_parameters(ros, f"/{ns}/agent_svc", max_parameters_yaml_bytes=5))
    answer = call(ros, load, good, agent)
    assert not answer.success and "14 bytes, more than the 5 allowed" in answer.message, answer.message
    assert all(r.successful for r in set_parameters(ros, f"/{ns}/agent_svc", max_parameters_yaml_bytes=65536))

    answer = call(ros, load, good, agent)
    assert answer.success, answer.message
    answer = call(ros, load, good, agent)
    assert not answer.success and "already hosted" in answer.message
    encoder = load_request(ModuleAssignment.KIND_ENCODER, "odometry_encoder:odom_enc",
                           yaml="speed_names: [crawl, dash]")
    answer = call(ros, load, encoder, agent)
    assert answer.success, answer.message
    wait(ros, lambda: bool(vocabularies), 10, agent)
    assert "forward-crawl" in " ".join(vocabularies[-1].words)  # the YAML reached the encoder
    adverts.clear()
    wait(ros, lambda: latest(adverts, "svc") is not None, 5, agent)
    advert = latest(adverts, "svc")
    assert set(advert.modules_hosted) == {"blocks_0_2", "odometry_encoder:odom_enc"}
    assert advert.memory_free_bytes == 2_000_000_000 - 1000

    for module_id in ("blocks_0_2", "odometry_encoder:odom_enc"):
        answer = call(ros, unload, UnloadModule.Request(module_id=module_id), agent)
        assert answer.success, answer.message
    adverts.clear()
    wait(ros, lambda: latest(adverts, "svc") is not None, 5, agent)
    assert list(latest(adverts, "svc").modules_hosted) == []
    assert latest(adverts, "svc").memory_free_bytes == 2_000_000_000


def test_an_agent_keeps_advertising_while_its_shard_emulates_a_slow_host_and_link(processes, client):
    """The emulation holds packets with timers, not sleeps: the agent's one executor keeps serving meanwhile."""
    ros, ns = client
    adverts = ros.collect(ComputeAdvert, f"/{ns}/adverts", ADVERTS)
    output = ros.collect(ChainPacket, "chain/hidden_0", TENSORS)
    agent = start_agent(processes, ns, "emu")
    load = ros.node.create_client(LoadModule, f"/{ns}/agent_emu/load_module")
    wait(ros, load.service_is_ready, 60, agent)
    # 1.5 s across the link each way (and a 0.25x host): an executor that slept through it would advertise nothing
    emulation = "compute_slowdown: 4.0\ninput_link: [1.5, 100000000.0]\noutput_link: [1.5, 100000000.0]\n"
    request = load_request(ModuleAssignment.KIND_EMBEDDING, "embedding", topics=("chain/input", "chain/hidden_0"),
                           yaml=emulation)
    answer = call(ros, load, request, agent)
    assert answer.success, answer.message

    chain = ros.publisher(ChainPacket, "chain/input", TENSORS)
    heard = len(adverts)
    chain.publish(ChainPacket(request_id="r1", session_id="s1", reset=True,
                              tensors=[to_msg(torch.tensor([[1, 504, 3953]]), "input_ids")]))
    chain.publish(ChainPacket(session_id="s1", release=True))
    wait(ros, lambda: output, 60, agent)
    advertised_meanwhile = len(adverts) - heard
    wait(ros, lambda: len(output) >= 2, 60, agent)
    assert advertised_meanwhile >= 10, advertised_meanwhile  # about 30 at 0.1 s over the 3 s the step was held
    step, released = output
    assert step.request_id == "r1" and step.error_code == ChainPacket.ERROR_NONE, step.error_message
    assert [t.name for t in step.tensors] == ["hidden_states"]
    assert [(t.stage, t.host_id) for t in step.timings] == [("module:embedding", "emu")]
    assert released.release and released.session_id == "s1"  # behind the step, in order


@pytest.mark.parametrize(("plugin", "kind"), [("shard", "shard"), ("ShardNode", "shard"),
                                              ("edge_lam::TensorEchoNode", "tensor_echo"),
                                              ("edge_lam.encoders.camera_node:CameraEncoderNode", "camera_encoder")])
def test_a_container_plugin_name_is_a_kind_a_class_or_its_path(plugin, kind):
    assert component_kind("edge_lam", plugin) == kind


@pytest.mark.parametrize(("package", "plugin", "why"), [("rclcpp_components", "shard", "edge_lam components only"),
                                                        ("edge_lam", "WarpDrive", "no edge_lam component")])
def test_a_container_plugin_that_is_not_ours_is_refused(package, plugin, why):
    with pytest.raises(ValueError, match=why):
        component_kind(package, plugin)


def test_the_standard_container_services_load_list_and_unload_a_component(processes, client):
    """Runs where composition_interfaces is installed (any ROS 2 install); its wheel is not on PyPI."""
    pytest.importorskip("composition_interfaces")
    from composition_interfaces.srv import ListNodes, LoadNode, UnloadNode

    ros, ns = client
    agent = start_agent(processes, ns, "cont")
    services = {kind: ros.node.create_client(kind, f"/{ns}/agent_cont/_container/{name}")
                for kind, name in ((LoadNode, "load_node"), (ListNodes, "list_nodes"), (UnloadNode, "unload_node"))}
    wait(ros, lambda: all(s.service_is_ready() for s in services.values()), 60, agent)
    for package, plugin, why in (("other_pkg", "x", "edge_lam components only"), ("edge_lam", "Warp", "no edge")):
        answer = call(ros, services[LoadNode], LoadNode.Request(package_name=package, plugin_name=plugin), agent)
        assert not answer.success and why in answer.error_message

    request = LoadNode.Request(package_name="edge_lam", plugin_name="edge_lam::TensorEchoNode", node_name="echo",
                              remap_rules=["ping:=ping_in"],
                              parameters=[Parameter("validate", value=False).to_parameter_msg()])
    loaded = call(ros, services[LoadNode], request, agent)
    assert loaded.success and loaded.full_node_name == f"/{ns}/echo" and loaded.unique_id > 0, loaded

    # The component runs in the agent's process, with its remap rule and parameter.
    pongs = ros.collect(TensorList, f"/{ns}/pong", TENSORS)
    ros.publisher(TensorList, f"/{ns}/ping_in", TENSORS, timeout_s=30).publish(TensorList(header=Header(frame_id="1")))
    wait(ros, lambda: pongs, 30, agent)
    listed = call(ros, services[ListNodes], ListNodes.Request(), agent)
    assert dict(zip(listed.unique_ids, listed.full_node_names, strict=True))[loaded.unique_id] == f"/{ns}/echo"

    assert call(ros, services[UnloadNode], UnloadNode.Request(unique_id=loaded.unique_id), agent).success
    listed = call(ros, services[ListNodes], ListNodes.Request(), agent)
    assert f"/{ns}/echo" not in listed.full_node_names
    again = call(ros, services[UnloadNode], UnloadNode.Request(unique_id=loaded.unique_id), agent)
    assert not again.success and "no component" in again.error_message
