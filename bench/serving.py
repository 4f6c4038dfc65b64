"""Serving SmolLM2 from shards, in one run: what a shard holds in memory, what each weight dtype buys and costs,
how decoding scales with concurrent sessions, and whether the plan's expected per-token latency is what the chain
then measures.

(a) Memory per shard: the middle third (blocks:10:20) built in a fresh process, once loading only its tensors (what
    shards do) and once loading the whole model first and keeping the third (what a user of transformers alone
    does); resident memory after a prompt and 8 decode steps and the peak, with torch and transformers imported
    before (their ~340 MiB are in both). Also the resident memory of the middle shard process of each chain in (b).
(b) Per weight dtype: greedy decode speed of the 3-process chain over DDS (one shard process per third, the gateway
    composed into the first, as bench/split_inference.py) against the whole fp32 model in one process, timed right
    before each request (paired); quality against fp32: top-1 agreement and mean KL divergence of the next-token
    distributions over the prompts and fp32's greedy continuations of them (teacher forced).
(c) Concurrent sessions: the chain at the fastest dtype whose agreement is >= 0.98 answers 1, 2, 4, 8 and 16
    requests sent at once; aggregate decode tokens/s over the window where every session is decoding (after the
    last first token, before the first final one).
(d) The plan's expected decode latency per token, priced as the coordinator prices it (the roofline of
    ``placement.roofline`` on this machine's GFLOP/s and memory bandwidth measured as a host agent measures them, with
    the step overhead and read efficiency the coordinator measures for the model at that dtype), against what the
    chain measured in (b) at each dtype. The three processes share one machine: as the coordinator does for modules
    on one host, the hops between them are priced free (each costs a few ms here).

    python bench/serving.py [--max-new-tokens 32] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch
from split_inference import LAYOUTS, MODEL, PROMPTS, WholeModel, chat_ids, p99, running_chain

from edge_lam.chain.latency_drift import expected_over_measured
from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import Host, Link, ModuleSpec
from edge_lam.fleet.host_measurement import reference_bandwidth_gbps, reference_gflops
from edge_lam.fleet.model_pricing import price_model
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.model.precision import WEIGHT_DTYPES
from edge_lam.model.sampling import Sampling
from edge_lam.model.sessions import give_back_memory
from edge_lam.placement.solver import evaluate

MIDDLE = [ModuleSpec.parse("blocks:10:20")]
CONCURRENCY = (1, 2, 4, 8, 16)
MIN_AGREEMENT = 0.98


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """Resident memory now and at its peak, MiB, of a process."""
    status = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "peak_mib": int(status["VmHWM"].split()[0]) / 1024}


def loading(mode: str, weight_dtype: str) -> dict:
    """(a) The middle third loaded ``partial`` or ``whole``, run on a prompt and 8 decode steps."""
    before = memory_mib()
    start = time.perf_counter()
    model = load_model(MODEL, MIDDLE if mode == "partial" else None, weight_dtype)
    core = ShardCore(model, MIDDLE)
    del model
    gc.collect()
    give_back_memory()
    load_s = time.perf_counter() - start
    x = torch.randn(1, 16, core.hidden_size)
    for step in range(9):
        core.step({"hidden_states": x}, "s", 0 if step == 0 else 15 + step, step == 0, Sampling(), step)
        x = x[:, -1:]
    return {"import_mib": before["rss_mib"], **memory_mib(), "load_s": load_s, "weight_mib": core.weight_bytes / 2**20}


@torch.inference_mode()
def quality(weight_dtype: str, max_new: int) -> dict:
    """(b) Top-1 agreement with fp32 and mean KL(fp32 || dtype) of next-token distributions, teacher forced on the
    prompts and fp32's greedy continuations."""
    reference, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    model = load_model(MODEL, weight_dtype=weight_dtype)
    agree, kl, positions = 0.0, 0.0, 0
    for prompt in PROMPTS:
        ids = chat_ids(tokenizer, prompt)
        sequence = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                      do_sample=False)
        scored = slice(ids.shape[1] - 1, sequence.shape[1] - 1)  # the positions that chose a generated token
        p = reference(sequence).logits[0, scored].float().log_softmax(-1)
        q = model(sequence).logits[0, scored].float().log_softmax(-1)
        agree += float((p.argmax(-1) == q.argmax(-1)).sum())
        kl += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
        positions += p.shape[0]
    return {"agreement": agree / positions, "kl": kl / positions, "positions": positions}


def chain_speed(weight_dtype: str, max_new: int, rounds: int) -> dict:
    """(b) Decode speed of the 3-process chain at ``weight_dtype``, paired with the whole fp32 model's."""
    with running_chain(LAYOUTS["3proc"], {"weight_dtype": weight_dtype}) as (driver, _, processes):
        whole = WholeModel()
        driver.ask(PROMPTS[0], max_new)  # warm-up, not counted
        whole.run(PROMPTS[0], max_new)
        decode, baseline, tokens = [], [], []
        for prompt in PROMPTS * rounds:
            baseline.extend(whole.run(prompt, max_new)[1])
            _, chunks = driver.ask(prompt, max_new)
            if chunks[-1][1].error_code:
                raise RuntimeError(chunks[-1][1].error_message)
            arrivals = [t for t, r in chunks if r.token_ids]
            decode.extend(b - a for a, b in itertools.pairwise(arrivals))
            tokens.append([i for _, r in chunks for i in r.token_ids])
        return {"decode": decode, "baseline_decode": baseline, "tokens": tokens,
                "middle_shard": memory_mib(processes[1].pid)}


def expected(weight_dtype: str, context_tokens: int) -> dict:
    """(d) The 3-process layout's decode per token as the coordinator prices it on this machine."""
    priced = price_model(MODEL, "float16", False, weight_dtype)
    gflops, bandwidth = reference_gflops(repeats=21, threads=1), reference_bandwidth_gbps(threads=1)
    hosts = [Host(f"shard_{i}", gflops, 8 * 2**30, "edge", bandwidth) for i in range(3)]
    bounds = [0, 11, 21, len(priced.units)]  # embedding + blocks 0-9 | blocks 10-19 | blocks 20-29 + head
    segments = [(f"shard_{i}", bounds[i], bounds[i + 1]) for i in range(3)]
    free = [Link(a.host_id, b.host_id, latency_s=0.0, bandwidth_bps=1e15) for a in hosts for b in hosts if a != b]
    plan = evaluate(priced.units, segments, hosts, free, source_host="shard_0", sink_host="shard_0",
                    context_tokens=context_tokens)
    return {"expected_s": plan.expected_latency_s, "gflops": gflops, "bandwidth_gbps": bandwidth,
            "step_overhead_ms_per_unit": 1e3 * priced.step_overhead_s, "read_efficiency": priced.read_efficiency}


def steady_rate(requests: dict[str, list]) -> float:
    """Tokens per second over the window where every request is decoding: after the last first token, up to the
    first final one."""
    arrivals = {i: [(t, len(r.token_ids)) for t, r in chunks if r.token_ids] for i, chunks in requests.items()}
    start = max(a[0][0] for a in arrivals.values())
    end = min(a[-1][0] for a in arrivals.values())
    tokens = sum(n for a in arrivals.values() for t, n in a if start < t <= end)
    return tokens / (end - start)


def concurrency(weight_dtype: str, max_new: int, rounds: int) -> dict:
    """(c) Aggregate decode tokens/s with 1, 2, 4, 8 and 16 requests at once, ``rounds`` times each."""
    prompts = [f"{p} Answer in {k + 2} sentences." for k in range(4) for p in PROMPTS]
    with running_chain(LAYOUTS["3proc"], {"weight_dtype": weight_dtype}) as (driver, _, _):
        driver.ask_all(prompts[:4], max_new)  # warm-up, not counted
        rates = {}
        for n in CONCURRENCY:
            runs = []
            for _ in range(rounds):
                requests = driver.ask_all(prompts[:n], max_new)
                errors = [r.error_message for chunks in requests.values() for _, r in chunks if r.error_code]
                if errors:
                    raise RuntimeError(errors[0])
                runs.append(steady_rate(requests))
            rates[str(n)] = statistics.median(runs)
        return {"rates": rates}


def run_apart(name: str, args: argparse.Namespace, env: dict) -> dict:
    """One measurement in a fresh process (its memory and its start are its own)."""
    done = subprocess.run([sys.executable, __file__, "--run", name, "--max-new-tokens", str(args.max_new_tokens),
                           "--rounds", str(args.rounds)], env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"run {name} failed:\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def one_run(name: str, args: argparse.Namespace) -> dict:
    kind, _, rest = name.partition(":")
    if kind == "loading":
        mode, weight_dtype = rest.split(":")
        return loading(mode, weight_dtype)
    if kind == "quality":
        return quality(rest, args.max_new_tokens)
    if kind == "speed":
        return chain_speed(rest, args.max_new_tokens, args.rounds)
    if kind == "expected":
        return expected(rest, 40 + args.max_new_tokens)  # the prompts' ~40 tokens and the answer
    if kind == "concurrency":
        return concurrency(rest, args.max_new_tokens, args.rounds)
    raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="times each prompt or level is run (default 2)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        print(json.dumps(one_run(args.run, args)))
        return 0

    env = dict(os.environ, ROS_DOMAIN_ID=str(100 + os.getpid() % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    figures: dict = {"max_new_tokens": args.max_new_tokens, "rounds": args.rounds}

    print("(a) memory of a shard holding SmolLM2's middle third (blocks:10:20), MiB, after a prompt and 8 steps")
    print(f"{'dtype':>9} | {'partial RSS':>11} {'peak':>6} {'load s':>6} | {'whole RSS':>9} {'peak':>6} {'load s':>6}"
          f" | {'RSS ratio':>9} {'peak ratio':>10} | {'weights':>7} | {'imports':>7}")
    memory = {}
    for weight_dtype in WEIGHT_DTYPES:
        part, whole = (run_apart(f"loading:{mode}:{weight_dtype}", args, env) for mode in ("partial", "whole"))
        row = memory[weight_dtype] = {
            "partial": part, "whole": whole, "rss_ratio": part["rss_mib"] / whole["rss_mib"],
            "peak_ratio": part["peak_mib"] / whole["peak_mib"]}
        print(f"{weight_dtype:>9} | {part['rss_mib']:11.0f} {part['peak_mib']:6.0f} {part['load_s']:6.2f} | "
              f"{whole['rss_mib']:9.0f} {whole['peak_mib']:6.0f} {whole['load_s']:6.2f} | {row['rss_ratio']:9.2f} "
              f"{row['peak_ratio']:10.2f} | {part['weight_mib']:7.0f} | {part['import_mib']:7.0f}")
    figures["memory"] = memory

    print(f"\n(b) per weight dtype: the 3-process chain over DDS vs the whole fp32 model in one process (paired), "
          f"{len(PROMPTS)} prompts x {args.rounds} rounds x {args.max_new_tokens} tokens, greedy, 1 thread each")
    print(f"{'dtype':>9} | {'decode ms p50':>13} {'p99':>6} | {'tokens/s':>8} | {'whole fp32 tok/s':>16} | "
          f"{'ratio':>5} | {'agreement':>9} {'KL nats':>8} | {'same tokens':>11} | {'shard RSS':>9}")
    dtypes, reference = {}, None
    for weight_dtype in WEIGHT_DTYPES:
        speed, score = run_apart(f"speed:{weight_dtype}", args, env), run_apart(f"quality:{weight_dtype}", args, env)
        reference = reference or speed["tokens"]  # fp32 runs first
        same = [a == b for x, y in zip(speed["tokens"], reference, strict=True) for a, b in zip(x, y, strict=False)]
        rate, whole_rate = 1 / statistics.median(speed["decode"]), 1 / statistics.median(speed["baseline_decode"])
        row = dtypes[weight_dtype] = {
            "decode_p50_ms": 1e3 / rate, "decode_p99_ms": 1e3 * p99(speed["decode"]), "tokens_per_s": rate,
            "whole_fp32_tokens_per_s": whole_rate, "ratio_vs_fp32_whole": rate / whole_rate, **score,
            "same_tokens_as_fp32_chain": sum(same) / len(same), "middle_shard": speed["middle_shard"]}
        print(f"{weight_dtype:>9} | {row['decode_p50_ms']:13.1f} {row['decode_p99_ms']:6.1f} | {rate:8.1f} | "
              f"{whole_rate:16.1f} | {row['ratio_vs_fp32_whole']:5.2f} | {score['agreement']:9.3f} "
              f"{score['kl']:8.4f} | {row['same_tokens_as_fp32_chain']:11.3f} | "
              f"{speed['middle_shard']['rss_mib']:6.0f} MiB")
    figures["dtypes"] = dtypes
    served = max((d for d in WEIGHT_DTYPES if dtypes[d]["agreement"] >= MIN_AGREEMENT),
                 key=lambda d: dtypes[d]["tokens_per_s"])

    print(f"\n(c) concurrent sessions at {served} (the fastest dtype with agreement >= {MIN_AGREEMENT}): aggregate "
          f"decode tokens/s while every session decodes, median of {args.rounds}")
    rates = run_apart(f"concurrency:{served}", args, env)["rates"]
    print(f"{'sessions':>8} | {'tokens/s':>8} | {'vs 1':>5}")
    for n, rate in rates.items():
        print(f"{n:>8} | {rate:8.1f} | {rate / rates['1']:5.2f}")
    figures["concurrency"] = {"weight_dtype": served, "tokens_per_s": rates}

    print("\n(d) the plan's expected decode per token (the coordinator's price) vs the chain's measured p50 in (b)")
    print(f"{'dtype':>9} | {'expected ms':>11} | {'measured ms':>11} | {'expected/measured':>17}")
    prices = {}
    for weight_dtype in WEIGHT_DTYPES:
        price = prices[weight_dtype] = run_apart(f"expected:{weight_dtype}", args, env)
        measured_ms = dtypes[weight_dtype]["decode_p50_ms"]
        price["measured_ms"], price["ratio"] = measured_ms, expected_over_measured(price["expected_s"],
                                                                                  measured_ms / 1e3)
        print(f"{weight_dtype:>9} | {1e3 * price['expected_s']:11.1f} | {measured_ms:11.1f} | {price['ratio']:17.2f}")
    figures["expected"] = prices

    figures.update({
        "expected_over_measured": prices[served]["ratio"],
        "shard_rss_ratio": memory[served]["rss_ratio"],
        "fastest_dtype": served,
        "fastest_dtype_vs_fp32_whole": dtypes[served]["ratio_vs_fp32_whole"],
        "batch8_vs_batch1": rates["8"] / rates["1"],
    })
    print(f"\nshard_rss_ratio ({served}) {figures['shard_rss_ratio']:.2f} | fastest_dtype_vs_fp32_whole "
          f"{figures['fastest_dtype_vs_fp32_whole']:.2f} | batch8_vs_batch1 {figures['batch8_vs_batch1']:.2f} | "
          f"expected_over_measured ({served}) {figures['expected_over_measured']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
