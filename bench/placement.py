"""Where to run the model: the coordinator's plan against the placements a user would try, for a robot at 0.25x
compute beside an edge PC at 1x over a 20 ms / 100 Mbit/s link.

Each module's compute time is measured here, on this machine, as the 1x host (SmolLM2-135M decode and a 64-token
prefill, module by module, one torch thread; EfficientNet-Lite0 on a camera-bag frame); the robot takes 4x as long.
Transfers cost the link's latency plus bytes / bandwidth. One report = a 640x480 camera frame encoded, a prompt of
64 tokens prefilled, 32 tokens decoded by the gateway, the report sent back to the robot. Ours: the frame encoded on
the robot (only token ids cross the link), the gateway on the edge, the modules where the coordinator's own core
(``edge_lam.fleet.coordination``) puts them from the two hosts' adverts. The baselines: everything on the robot;
everything on the edge, with the raw frame shipped; decoder layers split in proportion to each host's memory.
The hosts and the link are emulated by these costs (no second machine here): the figures are the plan's priced
latency with measured compute, not a wall-clock run on two machines.

    python bench/placement.py [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time
import uuid

import numpy as np
import torch

from edge_lam.chain.shard import Sampling, ShardCore
from edge_lam.fleet.coordination import Advert, Chain, Coordinator, Policy
from edge_lam.model.decompose import ModuleSpec
from edge_lam.model.loading import load_model
from edge_lam.placement.solver import Host, Link, Segment, Unit, chain_units, evaluate, proportional_to_memory

MODEL = "smollm2-135m-instruct"
REF_GFLOPS = 100.0  # the 1x host, in the solver's units: measured seconds are turned into FLOPs at this rate
ROBOT_SCALE = 0.25
LINK = {"latency_s": 0.020, "bandwidth_bytes_per_s": 100e6 / 8}
MEMORY = {"robot": 2 * 2**30, "edge": 16 * 2**30}
FRAME_BYTES = 640 * 480 * 3
PROMPT_TOKENS, NEW_TOKENS = 64, 32
TOKEN_ID_BYTES = 8


def measure_modules(model, repeats: int = 20) -> tuple[list[float], list[float]]:
    """Seconds per unit (embedding, each block, head) for one decode step and for a 64-token prefill, at 1x."""
    layers = model.config.num_hidden_layers
    specs = ["embedding", *(f"blocks:{i}:{i + 1}" for i in range(layers)), "head"]
    core = ShardCore(model, [ModuleSpec.parse(s) for s in specs])
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS))
    decode: list[list[float]] = [[] for _ in specs]
    prefill: list[list[float]] = [[] for _ in specs]
    for _ in range(3):
        session = uuid.uuid4().hex
        out, timings = core.step({"input_ids": ids}, session, 0, True, Sampling(), 0)
        for i, (_, seconds) in enumerate(timings):
            prefill[i].append(seconds)
        token = out["next_token"].view(1, 1)
        for step in range(repeats):
            out, timings = core.step({"input_ids": token}, session, PROMPT_TOKENS + step, False, Sampling(), step)
            token = out["next_token"].view(1, 1)
            for i, (_, seconds) in enumerate(timings):
                decode[i].append(seconds)
        core.release(session)
    return [statistics.median(d) for d in decode], [statistics.median(p) for p in prefill]


def measure_encoder(repeats: int = 30) -> float:
    """Seconds of EfficientNet-Lite0 (onnxruntime, 1 thread) on a camera-bag frame, at 1x."""
    from edge_lam.encoders.classifier import EfficientNetClassifier

    classifier = EfficientNetClassifier(threads=1)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.encode(frame)
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def calibrated(units: list[Unit], seconds: list[float], tokens: int) -> list[Unit]:
    """The units with FLOPs that take the measured seconds on the 1x host (attention folded into them)."""
    return [dataclasses.replace(u, flops_per_token=s * REF_GFLOPS * 1e9 / tokens, flops_per_step=0.0,
                                attention_flops_per_context_token=0.0) for u, s in zip(units, seconds, strict=True)]


def hosts() -> list[Host]:
    return [Host("robot", REF_GFLOPS * ROBOT_SCALE, MEMORY["robot"], "robot"),
            Host("edge", REF_GFLOPS, MEMORY["edge"], "edge")]


def links() -> list[Link]:
    return [Link("robot", "edge", **LINK)]


def coordinators_plan(units: list[Unit], num_layers: int) -> list[Segment]:
    """What the coordinator decides from the two hosts' adverts, the gateway on the edge."""
    coordinator = Coordinator(Chain(tuple(units), num_layers, gateway_host="edge"), Policy(settle_s=0.0))
    decision = None
    for host in hosts():
        decision = coordinator.advert(Advert(host.host_id, host.role, host.gflops, 0.0, host.memory_free_bytes,
                                             host.memory_free_bytes, tuple(links())), now=1.0) or decision
    decision = coordinator.tick(2.0) or decision
    if coordinator.plan is None:
        raise RuntimeError(f"the coordinator made no plan: {decision}")
    return list(coordinator.plan.segments)


def hop_s(src: str, dst: str, nbytes: float) -> float:
    return 0.0 if src == dst else LINK["latency_s"] + nbytes / LINK["bandwidth_bytes_per_s"]


def report_latency(segments: list[Segment], decode_units: list[Unit], prefill_units: list[Unit], encode_s: float,
                   encoder_host: str, gateway: str) -> dict[str, float]:
    """The frame (taken on the robot) encoded on ``encoder_host``, the prompt sent to the gateway, prefill and
    decode driven by the gateway through the segments, the report sent back to the robot."""
    scale = {"robot": ROBOT_SCALE, "edge": 1.0}
    encode = hop_s("robot", encoder_host, FRAME_BYTES) + encode_s / scale[encoder_host]
    common = {"source_host": gateway, "sink_host": gateway, "context_tokens": PROMPT_TOKENS + NEW_TOKENS,
              "input_bytes_per_token": TOKEN_ID_BYTES}
    prefill = evaluate(prefill_units, segments, hosts(), links(), tokens_in_flight=PROMPT_TOKENS, **common)
    decode = evaluate(decode_units, segments, hosts(), links(), tokens_in_flight=1, **common)
    moves = hop_s(encoder_host, gateway, PROMPT_TOKENS * TOKEN_ID_BYTES) + hop_s(gateway, "robot", 1024)
    total = encode + moves + prefill.expected_latency_s + NEW_TOKENS * decode.expected_latency_s
    return {"encode_ms": 1e3 * encode, "prompt_and_report_hops_ms": 1e3 * moves,
            "prefill_ms": 1e3 * prefill.expected_latency_s, "decode_ms_per_token": 1e3 * decode.expected_latency_s,
            "report_ms": 1e3 * total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(MODEL)
    base = chain_units(model, wire_dtype_bytes=2)
    num_layers = model.config.num_hidden_layers
    decode_s, prefill_s = measure_modules(model)
    del model
    encode_s = measure_encoder()
    decode_units = calibrated(base, decode_s, 1)
    prefill_units = calibrated(base, prefill_s, PROMPT_TOKENS)
    n = len(base)
    strategies = {  # segments, where the frame is encoded, where the gateway runs
        "coordinator's plan": (coordinators_plan(decode_units, num_layers), "robot", "edge"),
        "all on the robot": ([Segment("robot", 0, n)], "robot", "robot"),
        "all on the edge, raw frame shipped": ([Segment("edge", 0, n)], "edge", "edge"),
        "split in proportion to memory": (proportional_to_memory(decode_units, hosts()), "robot", "edge"),
    }
    rows = {name: report_latency(segments, decode_units, prefill_units, encode_s, encoder, gateway)
            | {"segments": [list(s) for s in segments], "encoder_host": encoder, "gateway_host": gateway}
            for name, (segments, encoder, gateway) in strategies.items()}
    best_baseline = min(r["report_ms"] for name, r in rows.items() if name != "coordinator's plan")
    ours = rows["coordinator's plan"]["report_ms"]
    print(f"SmolLM2-135M + EfficientNet-Lite0; robot {ROBOT_SCALE}x, edge 1x (compute measured here: decode "
          f"{1e3 * sum(decode_s):.1f} ms/token, encoder {1e3 * encode_s:.1f} ms), link 20 ms / 100 Mbit/s; one report "
          f"= frame + {PROMPT_TOKENS}-token prefill + {NEW_TOKENS} tokens")
    print(f"{'placement':<36} | {'encode ms':>9} | {'hops ms':>7} | {'prefill ms':>10} | {'decode ms/token':>15} | "
          f"{'report ms':>9} | {'vs plan':>7} | encoder, gateway, modules")
    for name, row in rows.items():
        segments = ", ".join(f"{h}[{a}:{b}]" for h, a, b in row["segments"])
        print(f"{name:<36} | {row['encode_ms']:9.1f} | {row['prompt_and_report_hops_ms']:7.1f} | "
              f"{row['prefill_ms']:10.1f} | {row['decode_ms_per_token']:15.1f} | {row['report_ms']:9.1f} | "
              f"{row['report_ms'] / ours:6.2f}x | {row['encoder_host']}, {row['gateway_host']}, {segments}")
    print(f"plan_vs_best_baseline = {ours / best_baseline:.3f} (report latency of the plan / of the best baseline)")
    if args.json:
        args.json.write_text(json.dumps({"plan_vs_best_baseline": ours / best_baseline, "strategies": rows,
                                         "decode_s_per_unit": decode_s, "prefill_s_per_unit": prefill_s,
                                         "encoder_s": encode_s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
