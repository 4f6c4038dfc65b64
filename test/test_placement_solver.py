"""The placement solver on cases checkable by hand, against exhaustive search, and the host measurement helpers.

No ROS and no model weights: chains are built from numbers (SmolLM2-135M's sizes where a real model matters).
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from edge_lam.descriptors import Host, Link, ModuleSpec
from edge_lam.fleet.host_measurement import reference_gflops, scaled
from edge_lam.model.costs import chain_units, llama_units
from edge_lam.placement.policy import should_move
from edge_lam.placement.solver import evaluate, placed_modules, proportional_to_memory, solve
from edge_lam.placement.types import PlacementError, Plan, Segment, Unit

SMOLLM2 = dict(hidden_size=576, num_layers=30, vocab_size=49152, intermediate_size=1536, num_heads=9, num_kv_heads=3)
MB = 10**6


def unit(module: str, *costs: float) -> Unit:
    return Unit(ModuleSpec.parse(module), *costs)


def texts(modules: list[list[ModuleSpec]]) -> list[list[str]]:
    return [[str(m) for m in segment] for segment in modules]


def chain(gflop: list[float], out_bytes: int = 1000, weight_bytes: int = 100,
          kv_bytes_per_token: int = 0) -> list[Unit]:
    """Blocks of the given GFLOP per token, each sending ``out_bytes``; the last sends one token id per step."""
    units = [unit(f"blocks:{i}:{i + 1}", g * 1e9, weight_bytes, kv_bytes_per_token, out_bytes)
             for i, g in enumerate(gflop)]
    units[-1] = unit("head", gflop[-1] * 1e9, weight_bytes, kv_bytes_per_token, 0, 8)
    return units


def test_equal_compute_and_a_slow_link_keep_everything_on_one_host():
    units = chain([1, 1, 1, 1])
    hosts = [Host("A", 10.0, MB), Host("B", 10.0, MB)]
    slow = [Link("A", "B", 0.1, 8000.0)]  # 100 ms and 1 kB/s
    plan = solve(units, hosts, slow, source_host="A", sink_host="B", input_bytes_per_token=16)
    # 4 GFLOP at 10 GFLOP/s = 0.4 s; the head's token id (8 B) to B: 0.1 + 8/1000
    assert plan.segments == (("A", 0, 4),)
    assert plan.expected_latency_s == pytest.approx(0.508, rel=1e-12)
    assert plan.compute_s == pytest.approx((0.4,)) and plan.transfer_s == pytest.approx((0.0, 0.108))
    assert plan.solver == "exact_dp" and plan.feasible
    # the other single host gets the 16-byte input over the link instead: 0.1 + 0.016 + 0.4
    on_b = evaluate(units, [("B", 0, 4)], hosts, slow, source_host="A", sink_host="B", input_bytes_per_token=16)
    assert on_b.expected_latency_s == pytest.approx(0.516)
    # a split ships 1000 bytes of hidden state: 0.4 + 0.1 + 1.0
    split = evaluate(units, [("A", 0, 2), ("B", 2, 4)], hosts, slow, source_host="A", sink_host="B")
    assert split.expected_latency_s == pytest.approx(1.5)


def test_fast_edge_takes_all_but_the_encoder_that_shrinks_the_raw_frame():
    # A 1 MB camera frame in, an encoder that turns it into 1000 bytes, two blocks and a head.
    units = [unit("encoder:camera", 2e7, 10, 0, 1000), unit("blocks:0:1", 8e7, 10, 0, 1000),
             unit("blocks:1:2", 8e7, 10, 0, 1000), unit("head", 4e7, 10, 0, 0, 8)]
    hosts = [Host("robot", 2.0, MB, "robot"), Host("edge", 8.0, MB)]
    links = [Link("robot", "edge", 0.002, 8e8)]  # 100 MB/s
    ends = dict(source_host="robot", sink_host="robot", input_bytes_per_token=1e6)
    plan = solve(units, hosts, links, **ends)
    assert plan.segments == (("robot", 0, 1), ("edge", 1, 4))
    # encoder on the robot 2e7/2e9 = 0.010; 1000 B to the edge 0.002 + 1e-5; 2e8 FLOP at 8 GFLOP/s = 0.025;
    # the token id back 0.002 + 8e-8
    assert plan.compute_s == pytest.approx((0.010, 0.025), rel=1e-12)
    assert plan.transfer_s == pytest.approx((0.0, 0.00201, 0.00200008), rel=1e-12)
    assert plan.expected_latency_s == pytest.approx(0.03901008, rel=1e-12)
    assert texts(plan.module_specs(units)) == [["encoder:camera"], ["blocks:0:2", "head"]]
    # The baselines: the raw frame shipped to the edge (0.002 + 0.01 + 0.0275 + 0.00200008); all on the robot.
    edge_only = evaluate(units, [("edge", 0, 4)], hosts, links, **ends)
    robot_only = evaluate(units, [("robot", 0, 4)], hosts, links, **ends)
    assert edge_only.expected_latency_s == pytest.approx(0.04150008, rel=1e-12)
    assert robot_only.expected_latency_s == pytest.approx(0.11, rel=1e-12)
    modules = placed_modules(plan, units, hosts)
    assert [(str(m.module), m.host_id, m.memory_bytes) for m in modules] == [
        ("encoder:camera", "robot", 10), ("blocks:0:2", "edge", 20), ("head", "edge", 10)]
    assert [m.compute_s for m in modules] == pytest.approx([0.010, 0.020, 0.005])


def test_kv_cache_memory_forces_the_split_at_unit_one():
    units = chain([1, 2, 2, 3], kv_bytes_per_token=1)  # each unit: 100 B of weights + 1 B per token of context
    hosts = [Host("robot", 1.0, 1000, "robot"), Host("edge", 10.0, 450)]
    links = [Link("robot", "edge", 0.001, 8e6)]
    ends = dict(source_host="robot", sink_host="robot")
    # No context: 400 B fit the edge, which runs all 8 GFLOP: 0.001008 + 0.8 + 0.001008
    roomy = solve(units, hosts, links, context_tokens=0, **ends)
    assert roomy.segments == (("edge", 0, 4),)
    assert roomy.expected_latency_s == pytest.approx(0.802016)
    # 50 tokens of context make a unit 150 B: the edge holds three. Its three heaviest in one range are units 1..3
    # (7 GFLOP, 0.7 s); unit 0 stays on the robot (1 s); 1000 B to the edge (0.002) and a token id back (0.001008).
    plan = solve(units, hosts, links, context_tokens=50, **ends)
    assert plan.segments == (("robot", 0, 1), ("edge", 1, 4))
    assert plan.memory_bytes == (150, 450)
    assert plan.expected_latency_s == pytest.approx(1.703008)
    # The other way round fits too but leaves the 3 GFLOP head on the robot: 0.001008 + 0.5 + 0.002 + 3
    other = evaluate(units, [("edge", 0, 3), ("robot", 3, 4)], hosts, links, context_tokens=50, **ends)
    assert other.feasible and other.expected_latency_s == pytest.approx(3.503008)


def test_infeasible_memory_names_the_unit_or_the_shortfall():
    links = [Link("a", "b", 0.001, 8e6)]  # 1 MB/s
    ends = dict(source_host="a", sink_host="a", context_tokens=0)
    big = [*chain([1, 1])[:1], unit("blocks:1:2", 1e9, 1000, 0, 10), chain([1])[0]]
    with pytest.raises(PlacementError, match=r"unit 1 'blocks:1:2' fits on no host.*largest free memory is 800 on "
                                             r"'b' \(short by 200\)"):
        solve(big, [Host("a", 1.0, 500), Host("b", 1.0, 800)], links, **ends)
    with pytest.raises(PlacementError, match=r"KV cache for 100 tokens"):
        solve(chain([1], kv_bytes_per_token=10), [Host("a", 1.0, 1000)], [], **{**ends, "context_tokens": 100})
    with pytest.raises(PlacementError, match=r"needs 1200 bytes .* 1000 free in all \(short by 200\)"):
        solve(chain([1, 1, 1], weight_bytes=400), [Host("a", 1.0, 500), Host("b", 1.0, 500)], links, **ends)
    # 900 B in all fit 1000 B, but each host holds one range and no range of two units fits 500 B
    with pytest.raises(PlacementError, match=r"do not split into one contiguous range per host"):
        solve(chain([1, 1, 1], weight_bytes=300), [Host("a", 1.0, 500), Host("b", 1.0, 500)], links, **ends)
    with pytest.raises(PlacementError, match=r"link that is missing"):
        solve(chain([1, 1]), [Host("b", 1.0, 500)], [], **ends)  # the source 'a' cannot reach 'b'


def brute_force(units, hosts, links, **ends) -> float:
    """Least latency over every split into contiguous ranges and every assignment of distinct hosts to them."""
    n, best = len(units), math.inf
    for cuts in range(1, min(n, len(hosts)) + 1):
        for inner in itertools.combinations(range(1, n), cuts - 1):
            bounds = [0, *inner, n]
            for chosen in itertools.permutations(hosts, cuts):
                segments = [(h.host_id, a, b) for h, a, b in zip(chosen, bounds[:-1], bounds[1:], strict=True)]
                best = min(best, evaluate(units, segments, hosts, links, **ends).expected_latency_s)
    return best


def test_dynamic_programming_equals_exhaustive_search_on_random_small_instances():
    rng = random.Random(5)
    solved = infeasible = 0
    for _ in range(150):
        units = [unit(f"blocks:{i}:{i + 1}", rng.uniform(0, 5e9), rng.randint(1, 10), rng.randint(0, 2),
                      rng.randint(0, 5000), rng.randint(0, 8)) for i in range(rng.randint(1, 6))]
        hosts = [Host(f"h{i}", rng.choice([0.5, 1.0, 4.0, 20.0]), rng.randint(5, 40)) for i in range(rng.randint(1, 3))]
        names = [h.host_id for h in hosts] + ["camera"]
        links = [Link(a, b, rng.uniform(0, 0.05), 8 * rng.choice([1e3, 1e5, 1e7]))
                 for a, b in itertools.combinations(names, 2) if rng.random() < 0.8]
        ends = dict(source_host=rng.choice(names), sink_host=rng.choice(names), context_tokens=rng.randint(0, 3),
                    tokens_in_flight=rng.randint(1, 3), input_bytes_per_token=rng.choice([8, 1e5]))
        expected = brute_force(units, hosts, links, **ends)
        if math.isinf(expected):
            with pytest.raises(PlacementError):
                solve(units, hosts, links, **ends)
            infeasible += 1
        else:
            plan = solve(units, hosts, links, **ends)
            assert plan.expected_latency_s == pytest.approx(expected, rel=1e-9)
            assert plan == evaluate(units, plan.segments, hosts, links, solver="exact_dp", **ends)
            solved += 1
    assert solved > 50 and infeasible > 10  # both branches were exercised


def smollm2_split_fleet(units: list[Unit]) -> list[Host]:
    """A robot that holds the embedding and 12 blocks at most, an edge that holds 18 blocks and the head at most."""
    embedding, block, head = units[0].weight_bytes, units[1].weight_bytes, units[-1].weight_bytes
    return [Host("robot", 2.0, embedding + 12 * block + 1000, "robot"), Host("edge", 8.0, 18 * block + head + 1000)]


def test_smollm2_units_match_its_published_size_and_split_into_module_specs():
    units = llama_units(**SMOLLM2, dtype_bytes=4, wire_dtype="float16")
    assert len(units) == 32 and str(units[0].module) == "embedding" and str(units[-1].module) == "head"
    block = units[1]
    # q, o: 576x576; k, v: 576x192; MLP: 3 x 576x1536; two norms of 576
    assert block.weight_bytes == (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) * 4 == 14_160_384
    assert block.flops_per_token == 2 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) == 7_077_888
    assert block.kv_bytes_per_token == 2 * 3 * 64 * 4 and block.out_bytes_per_token == 576 * 2
    # the head computes logits for the last token of a step only, and sends one int64 token id
    head = units[-1]
    assert head.flops(tokens=16, context_tokens=100) == head.flops(1, 0) == 2 * (49152 * 576 + 576)
    assert head.out_bytes(16) == 8 and block.out_bytes(16) == 16 * 1152
    assert block.flops(2, 10) == 2 * (7_077_888 + 10 * 4 * 9 * 64)
    # 134,515,008 parameters with the tied embedding counted once (head = final norm + the tied matrix)
    assert sum(u.weight_bytes for u in units[:-1]) // 4 + 576 == 134_515_008
    plan = solve(units, smollm2_split_fleet(units), [Link("robot", "edge", 0.005, 100e6)],
                 source_host="robot", sink_host="robot", context_tokens=0)
    # Neither host holds the whole model; the robot can hold the embedding and at most 12 blocks, so the edge takes
    # the rest and the head (the other order would leave the 57 MFLOP head on the slow robot).
    assert texts(plan.module_specs(units)) == [["embedding", "blocks:0:12"], ["blocks:12:30", "head"]]
    assert plan.segments == (Segment("robot", 0, 13), Segment("edge", 13, 32))


def test_units_read_off_the_real_smollm2_config_agree_with_the_numbers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from edge_lam.assets.cache import AssetMissingError, smollm2_dir

    try:
        folder = smollm2_dir()
    except AssetMissingError as missing:
        pytest.skip(str(missing))
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # parameter shapes only: no weights read, no memory taken
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert chain_units(model, "float16") == llama_units(**SMOLLM2, dtype_bytes=4, wire_dtype="float16", tied=True)


def test_units_follow_the_weight_dtype():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from edge_lam.assets.cache import AssetMissingError, smollm2_dir

    try:
        config = transformers.AutoConfig.from_pretrained(smollm2_dir())
    except AssetMissingError as missing:
        pytest.skip(str(missing))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert chain_units(model, "float16", "bfloat16") == llama_units(**SMOLLM2, dtype_bytes=2, wire_dtype="float16",
                                                                    tied=True)
    embedding, block, *_, head = chain_units(model, "float16", "int8")
    matrices = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert embedding.weight_bytes == 49152 * 576 * 2  # looked up, kept in bf16
    assert block.weight_bytes == matrices + 2 * 576 * 2 and block.kv_bytes_per_token == 2 * 3 * 64 * 2
    assert head.weight_bytes == 49152 * 576 + 576 * 2 and head.tied_bytes == 0  # an int8 copy of its own


def test_a_head_tied_to_the_embedding_is_counted_once_where_one_host_holds_both():
    units = llama_units(**SMOLLM2, dtype_bytes=4, tied=True)
    matrix, whole = 49152 * 576 * 4, sum(u.weight_bytes for u in units)
    assert units[-1].tied_bytes == matrix and whole - matrix == 134_515_008 * 4
    # A host with room for the model's weights once holds all of it (counting the matrix twice, nothing fits)
    host = Host("edge", 10.0, whole - matrix)
    plan = solve(units, [host], [], source_host="edge", sink_host="edge", context_tokens=0)
    assert plan.segments == (("edge", 0, 32),) and plan.memory_bytes == (whole - matrix,)
    head = placed_modules(plan, units, [host])[-1]
    assert str(head.module) == "head" and head.memory_bytes == 576 * 4  # the final norm; the matrix is the embedding's
    # Split over two hosts, each holds a copy of the matrix
    hosts = [Host("a", 10.0, whole), Host("b", 10.0, whole)]
    split = evaluate(units, [("a", 0, 16), ("b", 16, 32)], hosts, [Link("a", "b", 0.001, 1e9)],
                     source_host="a", sink_host="b", context_tokens=0)
    assert split.feasible and sum(split.memory_bytes) == whole
    squeezed = evaluate(units, [("edge", 0, 32)], [Host("edge", 10.0, whole - matrix - 1)], [],
                        source_host="edge", sink_host="edge", context_tokens=0)
    assert not squeezed.feasible


def test_hysteresis_moves_only_for_a_real_gain():
    assert should_move(1.0, 0.85)
    assert not should_move(1.0, 0.95)
    assert should_move(1.0, 0.95, min_gain=0.01)
    assert not should_move(0.10, 0.05, min_gain=0.1, min_gain_s=0.06)  # 50 % faster, but only 50 ms
    assert not should_move(1.0, 1.0, min_gain=0.0)
    assert should_move(math.inf, 2.0) and not should_move(math.inf, math.inf)

    units = chain([1, 2, 2, 3])
    links = [Link("robot", "edge", 0.001, 8e6), Link("robot", "edge2", 0.001, 8e6)]
    ends = dict(source_host="robot", sink_host="robot", context_tokens=0)
    before = [Host("robot", 1.0, 1000, "robot"), Host("edge", 10.0, 1000)]
    plan = solve(units, before, links, **ends)
    assert plan.segments == (("edge", 0, 4),)
    assert plan.expected_latency_s == pytest.approx(0.802016)  # 0.001008 + 8 GFLOP / 10 + 0.001008
    # A slightly faster edge joins: 0.002016 + 8 / 10.5 = 0.763921 is 4.75 % better, not worth a move.
    joined = [*before, Host("edge2", 10.5, 1000)]
    current = evaluate(units, plan.segments, joined, links, **ends).expected_latency_s
    best = solve(units, joined, links, **ends)
    assert best.segments == (("edge2", 0, 4),) and best.expected_latency_s == pytest.approx(0.002016 + 8 / 10.5)
    assert current == pytest.approx(0.802016) and not should_move(current, best.expected_latency_s)
    # One twice as fast joins instead: 0.402016, half the latency: move.
    fast = [*before, Host("edge2", 20.0, 1000)]
    assert should_move(current, solve(units, fast, links, **ends).expected_latency_s)
    # The edge is gone: the plan in force cannot run, so any plan that can is a move.
    gone = evaluate(units, plan.segments, before[:1], links, **ends)
    assert gone.problems == ("host 'edge' is not among the hosts",) and math.isinf(gone.expected_latency_s)
    assert should_move(gone.expected_latency_s, solve(units, before[:1], links, **ends).expected_latency_s)


def test_baselines_and_malformed_placements():
    units = chain([1, 1, 1, 1])
    hosts = [Host("robot", 1.0, 100), Host("edge", 4.0, 300)]
    assert proportional_to_memory(units, hosts) == [("robot", 0, 1), ("edge", 1, 4)]
    assert proportional_to_memory(units, hosts[::-1]) == [("edge", 0, 3), ("robot", 3, 4)]
    links = [Link("robot", "edge", 0.0, 8e9)]
    for bad in ([("robot", 0, 2), ("edge", 3, 4)], [("robot", 0, 2), ("robot", 2, 4)], [("edge", 0, 3)]):
        with pytest.raises(PlacementError):
            evaluate(units, bad, hosts, links, source_host="robot", sink_host="robot")
    # More hosts than the exact search takes: it says it fell back, and still gives a feasible plan.
    many = [*hosts, Host("cloud", 50.0, 1000)]
    plan = solve(units, many, [*links, Link("robot", "cloud", 0.01, 8e9)], source_host="robot", sink_host="robot",
                 max_exact_hosts=2)
    assert plan.solver.startswith("heuristic:") and plan.feasible
    assert {s.host_id for s in plan.segments} <= {"robot", "cloud"}
    assert isinstance(plan, Plan)


def test_reference_compute_is_measured_and_scaled():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    gflops = reference_gflops(size=128, repeats=3, threads=1)
    assert math.isfinite(gflops) and gflops > 0
    assert torch.get_num_threads() == threads  # the measurement leaves the process's setting as it was
    assert scaled(100.0, 0.25) == 25.0
    assert scaled(100.0, 0.25, load=0.5) == 12.5
    assert scaled(100.0, 1.0, load=1.5) == 0.0
    with pytest.raises(ValueError):
        scaled(-1.0, 1.0)
