"""Plans as the fleet sees them: module topics that stay put across plans, and the shards each host runs."""

from __future__ import annotations

from edge_lam.descriptors import Host, Link, ModuleSpec
from edge_lam.model.costs import llama_units
from edge_lam.placement.assignments import Assignment, assignments, chain_topics, shard_groups
from edge_lam.placement.solver import evaluate
from edge_lam.placement.types import Segment
from edge_lam.wire.fleet import from_assignment_msg, to_assignment_msg

UNITS = llama_units(hidden_size=576, num_layers=30, vocab_size=49152, intermediate_size=1536, num_heads=9,
                    num_kv_heads=3)
HOSTS = [Host("robot", 5.0, 2**31, "robot"), Host("edge", 20.0, 2**31, "edge")]
LINKS = [Link("robot", "edge", 0.002, 100e6)]


def plan_of(*segments: Segment) -> list[Assignment]:
    plan = evaluate(UNITS, list(segments), HOSTS, LINKS, source_host="edge", sink_host="edge")
    return assignments(plan, UNITS, HOSTS, num_layers=30)


def test_topics_are_named_by_where_hidden_states_enter():
    assert chain_topics(ModuleSpec("embedding"), 30) == ("chain/input", "chain/hidden_0")
    assert chain_topics(ModuleSpec("blocks", 12, 30), 30) == ("chain/hidden_12", "chain/hidden_30")
    assert chain_topics(ModuleSpec("head"), 30) == ("chain/hidden_30", "chain/output")


def test_each_host_runs_its_consecutive_modules_as_one_shard():
    plan = plan_of(Segment("robot", 0, 13), Segment("edge", 13, 32))  # embedding + 12 blocks | 18 blocks + head
    assert [str(a.module) for a in plan] == ["embedding", "blocks:0:12", "blocks:12:30", "head"]
    (robot,) = shard_groups(plan, "robot")
    (edge,) = shard_groups(plan, "edge")
    assert robot.modules == (ModuleSpec("embedding"), ModuleSpec("blocks", 0, 12))
    assert robot.name == "shard_embedding_blocks_0_12"
    assert (robot.input_topic, robot.output_topic) == ("chain/input", "chain/hidden_12")
    assert (edge.input_topic, edge.output_topic) == ("chain/hidden_12", "chain/output")
    assert robot.memory_bytes == sum(a.memory_bytes for a in plan[:2]) > 0
    assert shard_groups(plan, "elsewhere") == []


def test_a_host_holding_two_separate_ranges_runs_two_shards():
    """The solver gives a host one range, but an agent runs whatever plan message it gets."""
    specs = [("embedding", "robot"), ("blocks:0:4", "robot"), ("blocks:4:19", "edge"), ("blocks:19:30", "robot"),
             ("head", "robot")]
    plan = [Assignment(ModuleSpec.parse(spec), host, *chain_topics(ModuleSpec.parse(spec), 30), 1, 0.0)
            for spec, host in specs]
    assert [g.module_ids for g in shard_groups(plan, "robot")] == [("embedding", "blocks_0_4"),
                                                                   ("blocks_19_30", "head")]


def test_assignments_survive_the_message_round_trip():
    plan = plan_of(Segment("robot", 0, 13), Segment("edge", 13, 32))
    assert [from_assignment_msg(to_assignment_msg(a)) for a in plan] == plan
    assert to_assignment_msg(plan[1]).module_id == "blocks_0_12"
