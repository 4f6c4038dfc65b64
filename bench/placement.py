"""Where to run the model: the coordinator's plan against the placements a user would try, for a robot at 0.25x
compute beside an edge PC at 1x over a 20 ms / 100 Mbit/s link.

Each module's compute time is measured here, on this machine, as the 1x host (SmolLM2-135M decode and a 64-token
prefill, module by module, one torch thread; EfficientNet-Lite0 on a camera-bag frame); the robot takes 4x as long.
Transfers cost the link's latency plus bytes / bandwidth. One report = a 640x480 camera frame encoded, a prompt of
64 tokens prefilled, 32 tokens decoded by the gateway, the report sent back to the robot. Ours: the frame encoded on
the robot (only token ids cross the link), the gateway on the edge, the modules where the coordinator's own core
(``edge_lam.fleet.coordination``) puts them from the two hosts' adverts. The baselines: everything on the robot;
everything on the edge, with the raw frame shipped; decoder layers split in proportion to each host's memory.
Two tables. The first prices each placement with the solver's cost model and the compute measured here. The
second runs it: every placement's modules in real shard processes over Fast DDS on this machine, the robot's
shards slowed to 0.25x (``compute_slowdown: 4``) and every hop between the hosts delayed by the link's latency and
bytes over bandwidth (``input_link`` / ``output_link``), the gateway in its own process; the bench itself plays
the robot's side of a report: EfficientNet-Lite0 on a frame (slowed 4x on the robot; after the frame's transfer
when the edge encodes it), the request to the gateway and the answer back, each hop across the link delayed.
``plan_vs_best_baseline`` is the measured (second) table's median report latency of the plan over the best
baseline's.

Last, whether the coordinator's own price is honest: the plan priced as the coordinator prices it (the roofline of
``placement.roofline``: this machine's GFLOP/s and memory bandwidth measured as a host agent measures them, x0.25 on
the robot; the decode step overhead as the coordinator measures it; context as long as a report's session) against
the decode per token its run measured at the gateway (first token to last). ``expected_over_measured`` is the
one over the other (goal 0.8-1.25; ``edge_lam.chain.latency_drift``, which the gateway's drift warning uses too).

    python bench/placement.py [--reports N] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import rclpy
import torch
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceRequest, InferenceResult

from edge_lam.chain.latency_drift import decode_s_per_token, expected_over_measured
from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import Advert, Host, Link, ModuleSpec
from edge_lam.fleet.coordination import Chain, Coordinator, Policy
from edge_lam.fleet.host_measurement import reference_bandwidth_gbps, reference_gflops
from edge_lam.fleet.model_pricing import price_model
from edge_lam.link.emulation import compute_delay_s
from edge_lam.model.costs import chain_units
from edge_lam.model.loading import load_model
from edge_lam.model.sampling import Sampling
from edge_lam.placement.solver import evaluate, proportional_to_memory
from edge_lam.placement.types import Segment, Unit, segment_modules
from edge_lam.processes import stop_processes
from edge_lam.ros.qos import CONTROL
from edge_lam.ros.spin import spin_until

MODEL = "smollm2-135m-instruct"
REF_GFLOPS = 100.0  # the 1x host, in the solver's units: measured seconds are turned into FLOPs at this rate
ROBOT_SCALE = 0.25
LINK = {"latency_s": 0.020, "bandwidth_bps": 100e6}
MEMORY = {"robot": 2 * 2**30, "edge": 16 * 2**30}
FRAME_BYTES = 640 * 480 * 3
PROMPT_TOKENS, NEW_TOKENS = 64, 32
TOKEN_ID_BYTES = 8
LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
SLOWDOWN = {"robot": 1 / ROBOT_SCALE, "edge": 1.0}
LINK_PARAMETER = [LINK["latency_s"], LINK["bandwidth_bps"]]


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
        done = core.step({"input_ids": ids}, session, 0, True, Sampling(), 0)
        out, timings = done.tensors, done.timings
        for i, (_, seconds) in enumerate(timings):
            prefill[i].append(seconds)
        token = out["next_token"].view(1, 1)
        for step in range(repeats):
            done = core.step({"input_ids": token}, session, PROMPT_TOKENS + step, False, Sampling(), step)
            out, timings = done.tensors, done.timings
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


def roofline_expected_s(segments: list[Segment]) -> tuple[float, dict]:
    """The plan's decode per token as the coordinator prices it: the roofline on this machine's GFLOP/s and memory
    bandwidth measured as a host agent measures them (x0.25 on the robot, as its shards are slowed), with the step
    overhead the coordinator measures, at a report's session length; and the figures it used."""
    priced = price_model(MODEL, "float16", False)
    gflops, bandwidth = reference_gflops(repeats=21, threads=1), reference_bandwidth_gbps(threads=1)
    scale = {"robot": ROBOT_SCALE, "edge": 1.0}
    measured = [Host(h.host_id, gflops * scale[h.host_id], h.memory_free_bytes, h.role, bandwidth * scale[h.host_id])
                for h in hosts()]
    plan = evaluate(priced.units, segments, measured, links(), source_host="edge", sink_host="edge",
                    context_tokens=PROMPT_TOKENS + NEW_TOKENS)
    return plan.expected_latency_s, {"gflops_1x": gflops, "bandwidth_gbps_1x": bandwidth,
                                     "step_overhead_ms_per_unit": 1e3 * priced.step_overhead_s,
                                     "read_efficiency": priced.read_efficiency,
                                     "compute_ms": [1e3 * c for c in plan.compute_s],
                                     "transfer_ms": [1e3 * t for t in plan.transfer_s]}


def hop_s(src: str, dst: str, nbytes: float) -> float:
    return 0.0 if src == dst else Link(src, dst, **LINK).transfer_s(nbytes)


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


class Placement:
    """One placement run for real: shard processes with emulated hosts and link, a gateway, and this process as
    the robot's side of each report."""

    def __init__(self, units: list[Unit], segments: list[Segment], encoder_host: str, gateway_host: str,
                 workdir: pathlib.Path) -> None:
        self.encoder_host, self.gateway_host = encoder_host, gateway_host
        self.namespace = f"/placement_{uuid.uuid4().hex[:8]}"
        topics = ["chain/input", *(f"chain/hop_{i}" for i in range(1, len(segments))), "chain/output"]
        sections, previous = {}, gateway_host
        for i, segment in enumerate(segments):
            modules = segment_modules(units, segment.start, segment.end)
            parameters = {"model": MODEL, "modules": [str(m) for m in modules],
                          "input_topic": topics[i], "output_topic": topics[i + 1], "host_id": segment.host_id,
                          "compute_slowdown": SLOWDOWN[segment.host_id], "num_threads": 1}
            if previous != segment.host_id:
                parameters["input_link"] = list(LINK_PARAMETER)  # copies: rcl refuses YAML aliases
            if i == len(segments) - 1 and segment.host_id != gateway_host:
                parameters["output_link"] = list(LINK_PARAMETER)
            sections[f"/**/shard_{i}"] = {"ros__parameters": parameters}
            previous = segment.host_id
        sections["/**/gateway"] = {"ros__parameters": {"model": MODEL, "plan_topic": "", "step_timeout_s": 300.0}}
        params = workdir / f"{self.namespace.strip('/')}.yaml"
        params.write_text(yaml.safe_dump(sections))
        ros_args = ["--ros-args", "-r", f"__ns:={self.namespace}", "--params-file", str(params)]
        names = {f"shard_{i}": "shard" for i in range(len(segments))} | {"gateway": "gateway"}
        self.logs = {name: workdir / f"{self.namespace.strip('/')}_{name}.log" for name in names}
        self.processes = [subprocess.Popen([str(LIB / executable), *ros_args, "-r", f"__node:={name}"],
                                           stdout=self.logs[name].open("w"), stderr=subprocess.STDOUT)
                          for name, executable in names.items()]
        self.node = rclpy.create_node("placement_bench", namespace=self.namespace)
        self.finals: dict[str, InferenceResult] = {}
        self.tokens: dict[str, int] = {}
        self.node.create_subscription(InferenceResult, "results", self.on_result, CONTROL)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)

    def on_result(self, msg: InferenceResult) -> None:
        self.tokens[msg.request_id] = self.tokens.get(msg.request_id, 0) + len(msg.token_ids)
        if msg.final:
            self.finals[msg.request_id] = msg

    def ask(self, token_ids: list[int], max_new_tokens: int, timeout_s: float = 300.0) -> InferenceResult | None:
        request = InferenceRequest(request_id=uuid.uuid4().hex, input_token_ids=token_ids)
        request.options.max_new_tokens = max_new_tokens
        self.requests.publish(request)
        spin_until(self.node, lambda: request.request_id in self.finals, timeout_s, period_s=0.01)
        return self.finals.get(request.request_id)

    def wait_until_serving(self, timeout_s: float = 180.0) -> None:
        """The gateway refuses until a probe has come back through every hop: ask one token until it answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and all(p.poll() is None for p in self.processes):
            spin_until(self.node, lambda: self.requests.get_subscription_count() > 0, deadline - time.monotonic(),
                       period_s=0.1)
            answer = self.ask([1, 2, 3], 1, timeout_s=30.0)
            if answer is not None and not answer.error_code:
                return
            time.sleep(1.0)
        tails = "\n".join(f"--- {name}:\n" + "\n".join(log.read_text().splitlines()[-8:])
                           for name, log in self.logs.items())
        raise RuntimeError(f"the chain in {self.namespace} did not serve within {timeout_s:g} s (or a process "
                           f"ended)\n{tails}")

    def report(self, classifier, frame: np.ndarray, token_ids: list[int]) -> tuple[float, int, float | None]:
        """One report, timed: the frame encoded where this placement encodes it, the prompt to the gateway,
        prefill and decode through the chain, the report back to the robot. Returns seconds, tokens and the
        decode's seconds per token at the gateway."""
        start = time.perf_counter()
        if self.encoder_host != "robot":  # the raw frame crosses the link first
            time.sleep(hop_s("robot", self.encoder_host, FRAME_BYTES))
        encoding = time.perf_counter()
        classifier.encode(frame)
        time.sleep(compute_delay_s(time.perf_counter() - encoding, SLOWDOWN[self.encoder_host]))
        time.sleep(hop_s(self.encoder_host, self.gateway_host, PROMPT_TOKENS * TOKEN_ID_BYTES))
        answer = self.ask(token_ids, NEW_TOKENS)
        if answer is None or answer.error_code:
            raise RuntimeError(f"a report failed in {self.namespace}: {answer and answer.error_message}")
        time.sleep(hop_s(self.gateway_host, "robot", 1024))
        total = next(t.seconds for t in answer.timings if t.stage == "total")
        tokens = self.tokens[answer.request_id]
        return (time.perf_counter() - start, tokens,
                decode_s_per_token(total, answer.time_to_first_token_s, tokens))

    def close(self) -> None:
        self.node.destroy_node()
        stop_processes(self.processes, grace_s=15.0)


def wall_clock(strategies: dict, units: list[Unit], reports: int) -> dict[str, dict]:
    """Each placement run for real, ``reports`` times after a warm-up report; seconds per report."""
    from edge_lam.encoders.classifier import EfficientNetClassifier
    from edge_lam.model.loading import load_tokenizer

    classifier = EfficientNetClassifier(threads=1)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    tokenizer = load_tokenizer(MODEL)
    text = ("Sensor readings of a mobile robot: the camera sees a corridor with a door on the left, the lidar "
            "reports a wall 0.6 m ahead, odometry says forward-slow turning left-slow. Describe it in detail.") * 2
    token_ids = tokenizer(text)["input_ids"][:PROMPT_TOKENS]
    figures = {}
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for name, (segments, encoder, gateway) in strategies.items():
                placement = Placement(units, segments, encoder, gateway, pathlib.Path(workdir))
                try:
                    placement.wait_until_serving()
                    placement.report(classifier, frame, token_ids)  # warm-up: first-call costs out of the figures
                    runs = [placement.report(classifier, frame, token_ids) for _ in range(reports)]
                finally:
                    placement.close()
                seconds = [s for s, _, _ in runs]
                decode = [d for _, _, d in runs if d is not None]
                figures[name] = {"report_ms_p50": 1e3 * statistics.median(seconds),
                                 "report_ms_p99": 1e3 * float(np.percentile(seconds, 99)),
                                 "reports": len(seconds), "tokens_per_report": [t for _, t, _ in runs],
                                 "decode_ms_per_token_p50": 1e3 * statistics.median(decode) if decode else None}
                print(f"  ran {name}: median {figures[name]['report_ms_p50']:.0f} ms over {reports} reports",
                      flush=True)
    finally:
        rclpy.try_shutdown()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--reports", type=int, default=3, help="reports timed per placement, run for real (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(MODEL)
    base = chain_units(model, "float16")
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
    priced_best = min(r["report_ms"] for name, r in rows.items() if name != "coordinator's plan")
    priced_ours = rows["coordinator's plan"]["report_ms"]
    print(f"SmolLM2-135M + EfficientNet-Lite0; robot {ROBOT_SCALE}x, edge 1x (compute measured here: decode "
          f"{1e3 * sum(decode_s):.1f} ms/token, encoder {1e3 * encode_s:.1f} ms), link 20 ms / 100 Mbit/s; one report "
          f"= frame + {PROMPT_TOKENS}-token prefill + {NEW_TOKENS} tokens")
    print("running each placement for real (shard processes, emulated hosts and link) ...", flush=True)
    measured = wall_clock(strategies, base, args.reports)
    ours = measured["coordinator's plan"]["report_ms_p50"]
    best = min(m["report_ms_p50"] for name, m in measured.items() if name != "coordinator's plan")
    print(f"{'placement':<36} | {'priced ms':>9} | {'vs plan':>7} | {'measured p50 ms':>15} | {'p99 ms':>7} | "
          f"{'vs plan':>7} | {'tokens':>6} | encoder, gateway, modules")
    for name, row in rows.items():
        segments = ", ".join(f"{h}[{a}:{b}]" for h, a, b in row["segments"])
        m = measured[name]
        print(f"{name:<36} | {row['report_ms']:9.1f} | {row['report_ms'] / priced_ours:6.2f}x | "
              f"{m['report_ms_p50']:15.1f} | {m['report_ms_p99']:7.1f} | {m['report_ms_p50'] / ours:6.2f}x | "
              f"{statistics.median(m['tokens_per_report']):6.0f} | {row['encoder_host']}, {row['gateway_host']}, "
              f"{segments}")
    print(f"plan_vs_best_baseline = {ours / best:.3f} (measured median report latency of the plan / of the best "
          f"baseline); priced: {priced_ours / priced_best:.3f}")
    expected_s, roofline = roofline_expected_s(strategies["coordinator's plan"][0])
    decode_ms = measured["coordinator's plan"]["decode_ms_per_token_p50"]
    ratio = expected_over_measured(expected_s, (decode_ms or 0.0) / 1e3)
    print(f"coordinator's price of its plan: expected {1e3 * expected_s:.1f} ms/token (roofline on "
          f"{roofline['gflops_1x']:.1f} GFLOP/s and {roofline['bandwidth_gbps_1x']:.2f} GB/s at 1x, step overhead "
          f"{roofline['step_overhead_ms_per_unit']:.2f} ms per unit), measured "
          f"{decode_ms or float('nan'):.1f} ms/token at the gateway: expected_over_measured = {ratio:.3f} "
          "(goal 0.8-1.25)")
    if args.json:
        args.json.write_text(json.dumps({
            "plan_vs_best_baseline": ours / best, "plan_vs_best_baseline_priced": priced_ours / priced_best,
            "expected_over_measured": ratio, "expected_ms_per_token": 1e3 * expected_s,
            "measured_ms_per_token": decode_ms, "roofline": roofline,
            "strategies": {name: rows[name] | {"measured": measured[name]} for name in rows},
            "decode_s_per_unit": decode_s, "prefill_s_per_unit": prefill_s, "encoder_s": encode_s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
