"""Following the placement plan on one host, as plain values: what a plan makes the host load, keep, unload and
retry, given what it runs already (shards of earlier plans, and components loaded on request), and what it says
about it on /diagnostics."""

from __future__ import annotations

import dataclasses

from edge_lam.descriptors import ModuleSpec
from edge_lam.fleet.plan_following import Hosting, PlanFollower
from edge_lam.placement.assignments import Assignment, chain_topics

LAYERS = 30


def assigned(host_of: dict[str, str], memory: int = 100) -> list[Assignment]:
    """A plan: module text -> host, in chain order."""
    found = []
    for text, host in host_of.items():
        module = ModuleSpec.parse(text)
        found.append(Assignment(module, host, *chain_topics(module, LAYERS), memory, 0.01))
    return found


SPLIT = {"embedding": "me", "blocks:0:10": "me", "blocks:10:30": "other", "head": "me"}


def follow(follower: PlanFollower, host_of: dict[str, str], hosted: dict[str, Hosting], version: int = 1,
           model_id: str = "", wire_dtype: str = "", weight_dtype: str = ""):
    return follower.follow("p", version, model_id, wire_dtype, assigned(host_of), hosted,
                           weight_dtype=weight_dtype)


def running(changes, from_plan: bool = True, failed: bool = False) -> dict[str, Hosting]:
    """What the host hosts once ``changes`` are loaded."""
    return {s.name: Hosting(s.module_ids, from_plan, failed, s) for s in (*changes.load, *changes.keep)}


def test_a_plan_loads_the_runs_of_modules_it_gives_this_host_with_its_model_or_the_default():
    follower = PlanFollower("me", "default_model")
    assert (follower.level, follower.note) == ("ok", "no plan yet")
    changes = follow(follower, SPLIT, {})
    assert [s.name for s in changes.load] == ["shard_embedding_blocks_0_10", "shard_head"]
    assert changes.unload == changes.keep == changes.forget == ()
    first = changes.load[0]
    assert (first.model, first.wire_dtype) == ("default_model", "float16")
    assert (first.group.input_topic, first.group.output_topic, first.group.memory_bytes) == \
        ("chain/input", "chain/hidden_10", 200)
    assert (follower.level, follower.note) == ("ok", "plan p v1: 2 shards here")
    named = follow(follower, SPLIT, {}, version=2, model_id="other_model", wire_dtype="bfloat16")
    assert {(s.model, s.wire_dtype) for s in named.load} == {("other_model", "bfloat16")}


def test_a_new_plan_keeps_what_it_still_wants_and_unloads_the_rest():
    follower = PlanFollower("me", "m")
    hosted = running(follow(follower, SPLIT, {}))
    moved = {"embedding": "me", "blocks:0:10": "me", "blocks:10:30": "me", "head": "other"}
    changes = follow(follower, moved, hosted, version=2)
    grown = "shard_embedding_blocks_0_10_blocks_10_30"
    assert changes.unload == ("shard_embedding_blocks_0_10", "shard_head")  # the first grew: loaded anew
    assert [s.name for s in changes.load] == [grown]
    again = follow(follower, moved, running(changes), version=3)
    assert again.unload == again.load == () and [s.name for s in again.keep] == [grown]
    other_model = follow(follower, moved, running(changes), version=4, model_id="x")
    assert other_model.unload == (grown,) and [(s.name, s.model) for s in other_model.load] == [(grown, "x")]
    assert follow(follower, dict.fromkeys(SPLIT, "other"), running(changes), version=5).unload == (grown,)
    assert follower.note == "plan p v5: 0 shards here"


def test_a_plan_in_another_weight_dtype_loads_its_shards_anew_in_it():
    follower = PlanFollower("me", "m")
    hosted = running(follow(follower, SPLIT, {}))
    assert {h.shard.weight_dtype for h in hosted.values()} == {"float32"}  # a plan naming none
    int8 = follow(follower, SPLIT, hosted, version=2, weight_dtype="int8")
    assert int8.keep == () and sorted(int8.unload) == sorted(hosted)
    assert {s.weight_dtype for s in int8.load} == {"int8"}
    assert follow(follower, SPLIT, running(int8), version=3, weight_dtype="int8").load == ()


def test_components_loaded_on_request_give_way_only_where_they_clash_with_the_plan():
    follower = PlanFollower("me", "m")
    wanted = follow(PlanFollower("me", "m"), SPLIT, {}).load
    head = next(s for s in wanted if s.name == "shard_head")
    (overlapping,) = follow(PlanFollower("me", "m"), {"blocks:0:10": "me"}, {}).load
    (elsewhere,) = follow(PlanFollower("me", "m"), {"blocks:10:30": "me"}, {}).load
    hosted = {
        head.name: Hosting(head.module_ids, False, False, head),  # the very shard the plan wants: kept
        overlapping.name: Hosting(overlapping.module_ids, False, False, overlapping),  # blocks 0-10 twice: unloaded
        elsewhere.name: Hosting(elsewhere.module_ids, False, False, elsewhere),  # nothing in common: left alone
        "odom_enc": Hosting(("odometry_encoder:odom_enc",), False),
    }
    changes = follow(follower, SPLIT, hosted)
    assert [s.name for s in changes.keep] == ["shard_head"]
    assert changes.unload == ("shard_blocks_0_10",)
    assert [s.name for s in changes.load] == ["shard_embedding_blocks_0_10"]
    # another kind of component under the name of a plan's shard gives way too
    echo = {"shard_head": Hosting(("tensor_echo:shard_head",), False)}
    named = follow(follower, SPLIT, echo, version=2)
    assert named.unload == ("shard_head",) and "shard_head" in [s.name for s in named.load]


def test_failed_loads_of_a_plan_are_dropped_and_retried_while_a_plan_wants_them():
    follower = PlanFollower("me", "m")
    failed = running(follow(follower, SPLIT, {}), failed=True)
    changes = follow(follower, SPLIT | {"blocks:10:30": "me"}, failed, version=2)
    assert set(changes.forget) == {"shard_embedding_blocks_0_10", "shard_head"}
    assert changes.unload == ()
    assert [s.name for s in changes.load] == ["shard_embedding_blocks_0_10_blocks_10_30_head"]
    retried = follow(follower, SPLIT, failed, version=3)
    assert [s.name for s in retried.load] == ["shard_embedding_blocks_0_10", "shard_head"]


def test_a_plan_that_cannot_be_followed_is_a_warning_until_one_can():
    follower = PlanFollower("me", "m")
    line = follower.unusable("p", 7, ValueError("module x: kind 9 is not a module of the model"))
    assert line == "plan p v7 unusable: module x: kind 9 is not a module of the model"
    assert follower.level == "warn"
    assert follower.note == "plan v7 unusable: module x: kind 9 is not a module of the model"
    follow(follower, SPLIT, {}, version=8)
    assert follower.level == "ok"


def test_a_shards_parameters_say_what_it_runs_and_which_a_request_may_override():
    (shard,) = follow(PlanFollower("me", "m"), {"blocks:0:10": "me"}, {}, wire_dtype="float32").load
    assert shard.parameters("me") == (
        {"model": "m", "wire_dtype": "float32", "host_id": "me", "weight_dtype": "float32"},
        {"modules": ["blocks:0:10"], "input_topic": "chain/hidden_0", "output_topic": "chain/hidden_10",
         "standby": False})


def test_a_standby_copy_is_loaded_idle_switched_on_by_the_plan_that_runs_it_here_and_off_again():
    follower = PlanFollower("me", "m")
    copy = assigned({"embedding": "other", "blocks:0:30": "other", "head": "other"})
    changes = follower.follow("p", 1, "", "", copy, {}, [dataclasses.replace(a, host_id="me") for a in copy])
    (shard,) = changes.load
    assert shard.standby and shard.parameters("me")[1]["standby"] is True and not changes.switch
    assert follower.note == "plan p v1: 0 shards here and 1 standby copies"
    # the other host is lost: the next plan runs the modules here, on the copy: nothing loaded or unloaded
    here = assigned({"embedding": "me", "blocks:0:30": "me", "head": "me"})
    changes = follower.follow("p", 2, "", "", here, running(changes))
    assert (changes.load, changes.unload) == ((), ()) and [s.name for s in changes.switch] == [shard.name]
    assert not changes.switch[0].standby
    # a later plan moves the modules back and keeps the copy here: switched off, still nothing loaded
    changes = follower.follow("p", 3, "", "", copy, running(changes), [dataclasses.replace(a, host_id="me")
                                                                        for a in copy])
    assert (changes.load, changes.unload) == ((), ()) and [s.standby for s in changes.switch] == [True]
