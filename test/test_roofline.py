"""The roofline price of a module (weights and KV cache at the host's memory bandwidth, or FLOPs at its GFLOP/s,
whichever is slower), the solver placing by it, and the gateway's check of a plan's expected per-token latency
against a request's measured one."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from edge_lam.chain.latency_drift import DriftWatch, decode_s_per_token, drift_warning, expected_over_measured
from edge_lam.descriptors import Host, Link
from edge_lam.model.costs import chain_units, llama_units
from edge_lam.model.loading import model_path
from edge_lam.placement.roofline import roofline_s, unit_s
from edge_lam.placement.solver import evaluate, solve

SMOLLM2 = dict(hidden_size=576, num_layers=30, vocab_size=49152, intermediate_size=1536, num_heads=9, num_kv_heads=3)
GIB = 2**30


def test_a_decode_step_is_priced_by_the_bytes_it_reads_over_the_bandwidth():
    block = llama_units(**SMOLLM2)[1]
    host = Host("h", gflops=50.0, memory_free_bytes=GIB, bandwidth_gbps=10.0)
    nbytes = block.weight_bytes + block.kv_bytes_per_token * 512
    assert unit_s(block, host, 1, 512) == pytest.approx(nbytes / 10e9)
    assert unit_s(block, host, 1, 512) > 5 * block.flops(1, 512) / 50e9  # memory-bound by far
    faster = Host("h", gflops=50.0, memory_free_bytes=GIB, bandwidth_gbps=20.0)
    assert unit_s(block, faster, 1, 512) == pytest.approx(unit_s(block, host, 1, 512) / 2)
    # the embedding looks one row up: no weights to stream, nothing to price
    assert unit_s(llama_units(**SMOLLM2)[0], host, 1, 512) == 0.0


def test_a_prompts_prefill_is_priced_by_its_flops():
    block = llama_units(**SMOLLM2)[1]
    host = Host("h", gflops=50.0, memory_free_bytes=GIB, bandwidth_gbps=10.0)
    assert unit_s(block, host, 256, 0) == pytest.approx(block.flops(256, 0) / 50e9)
    assert unit_s(block, host, 256, 0) > block.weight_bytes / 10e9


def test_an_int8_block_costs_less_time_than_fp32_on_the_same_host():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path("smollm2-135m-instruct")))
    host = Host("h", gflops=50.0, memory_free_bytes=GIB, bandwidth_gbps=10.0)
    seconds = {dtype: unit_s(chain_units(model, "float16", dtype)[1], host, 1, 256)
               for dtype in ("float32", "bfloat16", "int8")}
    assert seconds["int8"] < seconds["bfloat16"] < seconds["float32"], seconds
    assert seconds["float32"] / seconds["int8"] > 2.0, seconds  # a quarter of the matrices' bytes, less the KV cache


def test_without_a_bandwidth_a_host_is_priced_by_flops_as_before():
    assert roofline_s(1e9, 1e12, 100.0, 0.0) == pytest.approx(0.01)
    assert roofline_s(1e9, 1e9, 0.0, 10.0) == math.inf
    assert roofline_s(0.0, 1e9, 0.0, 10.0) == pytest.approx(0.1)


def test_the_solver_puts_a_memory_bound_chain_on_the_host_with_more_bandwidth():
    units = llama_units(**SMOLLM2)
    links = [Link("gw", "slow_memory", 0.001, 1e9), Link("gw", "fast_memory", 0.001, 1e9),
             Link("slow_memory", "fast_memory", 0.001, 1e9)]
    hosts = [Host("slow_memory", 50.0, 4 * GIB, bandwidth_gbps=5.0), Host("fast_memory", 50.0, 4 * GIB,
                                                                          bandwidth_gbps=20.0)]
    plan = solve(units, hosts, links, source_host="gw", sink_host="gw", context_tokens=256)
    assert [s.host_id for s in plan.segments] == ["fast_memory"]
    assert plan.compute_s[0] == pytest.approx(sum(u.bytes_read(256) for u in units) / 20e9, rel=0.01)
    # FLOPs alone (no bandwidth advertised) cannot tell the two apart: the first in order gets the chain
    blind = [Host(h.host_id, h.gflops, h.memory_free_bytes) for h in hosts]
    assert evaluate(units, [("fast_memory", 0, len(units))], blind, links, source_host="gw", sink_host="gw",
                    context_tokens=256).expected_latency_s == pytest.approx(
        evaluate(units, [("slow_memory", 0, len(units))], blind, links, source_host="gw", sink_host="gw",
                 context_tokens=256).expected_latency_s)


def test_a_steps_overhead_adds_to_the_roofline_and_slow_matrices_stretch_it():
    block = llama_units(**SMOLLM2)[1]
    host = Host("h", gflops=50.0, memory_free_bytes=GIB, bandwidth_gbps=10.0)
    busy = dataclasses.replace(block, overhead_flops_per_step=50e9 * 0.001)  # 1 ms at 50 GFLOP/s
    assert unit_s(busy, host, 1, 0) == pytest.approx(unit_s(block, host, 1, 0) + 0.001)
    # matrices that stream at half the advertised bandwidth take twice as long
    assert unit_s(dataclasses.replace(block, read_efficiency=0.5), host, 1, 0) == \
        pytest.approx(2 * unit_s(block, host, 1, 0))


def test_drift_warns_beyond_25_percent_either_way_and_not_within():
    assert drift_warning(0.100, 0.124) is None
    assert drift_warning(0.100, 0.076) is None
    slow = drift_warning(0.100, 0.126)
    assert slow is not None and "126.0 ms" in slow and "100.0 ms" in slow
    assert drift_warning(0.100, 0.074) is not None
    assert drift_warning(0.0, 0.5) is None  # no plan: nothing to compare with


def test_drift_is_warned_at_most_once_per_period():
    watch = DriftWatch(period_s=60.0)
    assert watch.check(0.1, 0.2, now=0.0) is not None
    assert watch.check(0.1, 0.2, now=30.0) is None
    assert watch.check(0.1, 0.11, now=61.0) is None  # within: nothing, and the next drift is still due
    assert watch.check(0.1, 0.2, now=62.0) is not None


def test_per_token_latency_is_the_decode_after_the_first_token():
    assert decode_s_per_token(total_s=4.2, time_to_first_token_s=0.3, tokens=40) == pytest.approx(0.1)
    assert decode_s_per_token(1.0, 0.3, 1) is None
    assert expected_over_measured(0.08, 0.1) == pytest.approx(0.8)
    assert math.isnan(expected_over_measured(0.0, 0.1))
