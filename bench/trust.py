"""What signing the chain costs: Ed25519 sign and verify (``edge_lam.wire.signing``) of a decode packet and of a
prefill packet, and the decode per-token latency of SmolLM2 split over two shard processes and a gateway with
trust off and on, in the same run.

The packets are the real ChainPackets a shard sends: one token's hidden state ([1, 1, 576] float16, 1152 B) for
decode, 64 tokens' ([1, 64, 576], 73,728 B) for prefill. Sign and verify are timed apart, each packet signed afresh
(the receiver's replay guard wants a newer stamp every time). The chain runs ``embedding, blocks:0:15`` and
``blocks:15:30, head`` in two ``shard`` processes and the ``gateway`` in a third (real rclpy over Fast DDS), so a
token crosses three signed hops (gateway -> shard_0 -> shard_1 -> gateway): one sign and one verify each. Trust off
and trust on alternate, prompt by prompt, so that the machine's drifts in speed fall on both alike.

    python bench/trust.py [--iterations 2000] [--max-new-tokens 32] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import rclpy
import rclpy.executors
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult

from edge_lam.processes import stop_processes
from edge_lam.ros.qos import CONTROL
from edge_lam.ros.spin import spin_until
from edge_lam.trust.checks import Stamper, Verdict, Verifier
from edge_lam.trust.keys import load_signing_key, load_trust_store, make_keys
from edge_lam.wire.signing import sign, verify
from edge_lam.wire.tensors import to_msg

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
HIDDEN = 576
LAYOUT = [["embedding", "blocks:0:15"], ["blocks:15:30", "head"]]
PROMPTS = ["What does a robot's lidar measure?", "Give one tip for charging batteries safely."]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def packet(tokens: int) -> ChainPacket:
    hidden = np.random.default_rng(0).standard_normal((1, tokens, HIDDEN)).astype(np.float16)
    msg = ChainPacket(request_id=uuid.uuid4().hex, session_id=uuid.uuid4().hex, step=1, position=tokens,
                      tensors=[to_msg(hidden, "hidden_states")])
    msg.options.max_new_tokens = 64
    return msg


def sign_verify(tokens: int, iterations: int, keys: pathlib.Path) -> dict:
    """Microseconds to sign and to verify one packet of ``tokens`` tokens' hidden states."""
    stamper = Stamper(load_signing_key(keys / "edge.key"))
    verifier = Verifier(load_trust_store(keys), max_clock_skew_s=60.0)
    msg = packet(tokens)
    signs, verifies = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        sign(msg, stamper, time.time_ns())
        signed = time.perf_counter()
        verdict = verify(msg, verifier, "chain/hidden", time.time_ns())
        verifies.append((time.perf_counter() - signed) * 1e6)
        signs.append((signed - start) * 1e6)
        if verdict is not Verdict.ACCEPTED:
            raise RuntimeError(f"a genuine packet was refused: {verdict.value}")
    return {"bytes": sum(len(t.data) for t in msg.tensors), "sign_us": statistics.median(signs),
            "sign_us_p99": p99(signs), "verify_us": statistics.median(verifies), "verify_us_p99": p99(verifies)}


class Chain:
    """Two shard processes and a gateway, with trust on (keys given) or off, and a node here that asks."""

    def __init__(self, keys: pathlib.Path | None, log) -> None:
        self.namespace = f"bench_trust_{uuid.uuid4().hex[:8]}"
        topics = ["chain/input", "chain/hop_1", "chain/output"]
        trust = {"signing_key": str(keys / "edge.key"), "trusted_keys": str(keys)} if keys else {}
        params = {f"/**/shard_{i}": {"ros__parameters": {
            "model": MODEL, "modules": modules, "input_topic": topics[i], "output_topic": topics[i + 1], **trust}}
            for i, modules in enumerate(LAYOUT)}
        params["/**/gateway"] = {"ros__parameters": {"model": MODEL, "chain_input_topic": topics[0],
                                                     "chain_output_topic": topics[-1], **trust}}
        self.params = tempfile.NamedTemporaryFile("w", suffix=".yaml")  # noqa: SIM115 -- lives as long as the chain
        yaml.safe_dump(params, self.params)
        self.params.flush()
        args = ["--ros-args", "-r", f"__ns:=/{self.namespace}", "--params-file", self.params.name]
        commands = [[LIB / "shard", *args, "-r", f"__node:=shard_{i}"] for i in range(len(LAYOUT))]
        commands.append([LIB / "gateway", *args])
        self.processes = [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT) for c in commands]
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("trust_bench", namespace=self.namespace, context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.chunks: list[tuple[float, InferenceResult]] = []
        self.results = self.node.create_subscription(InferenceResult, "results",
                                                     lambda r: self.chunks.append((time.perf_counter(), r)), CONTROL)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)

    def ask(self, prompt: str, max_new: int, timeout_s: float = 120) -> list[tuple[float, InferenceResult]]:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new
        self.chunks.clear()
        self.requests.publish(request)
        if not spin_until(self.executor, lambda: any(r.final and r.request_id == request.request_id
                                                     for _, r in self.chunks), timeout_s, period_s=1.0):
            raise TimeoutError("no answer from the chain")
        return [(t, r) for t, r in self.chunks if r.request_id == request.request_id]

    def wait_until_serving(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        spin_until(self.executor, lambda: self.requests.get_subscription_count() > 0, timeout_s)
        while True:  # the gateway refuses until the shards have loaded and connected
            try:
                if self.ask("Hi", 1, timeout_s=5)[-1][1].error_code == InferenceResult.ERROR_NONE:
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the chain did not come up")
            time.sleep(0.5)

    def decode_gaps_ms(self, prompt: str, max_new: int) -> list[float]:
        chunks = self.ask(prompt, max_new)
        if chunks[-1][1].error_code:
            raise RuntimeError(chunks[-1][1].error_message)
        arrivals = [t for t, r in chunks if r.token_ids]
        return [(b - a) * 1e3 for a, b in itertools.pairwise(arrivals)]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        stop_processes(self.processes)
        self.params.close()


def chains(keys: pathlib.Path, max_new: int, rounds: int) -> dict:
    """Decode per-token latency, ms, with trust off and on, prompts alternating between the two chains."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the processes' logs, shown if the run fails
    off = on = None
    try:
        off, on = Chain(None, log), Chain(keys, log)
        for chain in (off, on):
            chain.wait_until_serving()
            chain.decode_gaps_ms(PROMPTS[0], max_new)  # warm-up, not counted
        gaps: dict[str, list[float]] = {"off": [], "on": []}
        for prompt in PROMPTS * rounds:
            gaps["off"] += off.decode_gaps_ms(prompt, max_new)
            gaps["on"] += on.decode_gaps_ms(prompt, max_new)
        return {name: {"decode_ms": statistics.median(g), "decode_ms_p99": p99(g), "tokens": len(g)}
                for name, g in gaps.items()}
    except Exception:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        for chain in (off, on):
            if chain is not None:
                chain.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000, help="packets signed and verified (default 2000)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="times each prompt is asked (default 2)")
    parser.add_argument("--no-chain", action="store_true", help="only sign and verify, no processes")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        keys = pathlib.Path(folder)
        make_keys(keys, ["edge"])
        figures = {"decode_packet": sign_verify(1, args.iterations, keys),
                   "prefill_packet": sign_verify(64, max(args.iterations // 4, 10), keys)}
        if not args.no_chain:
            figures["chain"] = chains(keys, args.max_new_tokens, args.rounds)
    print(f"{'packet':<16}{'bytes':>8}{'sign us':>10}{'p99':>8}{'verify us':>11}{'p99':>8}")
    for name in ("decode_packet", "prefill_packet"):
        f = figures[name]
        print(f"{name:<16}{f['bytes']:>8}{f['sign_us']:>10.1f}{f['sign_us_p99']:>8.1f}{f['verify_us']:>11.1f}"
              f"{f['verify_us_p99']:>8.1f}")
    if "chain" in figures:
        chain = figures["chain"]
        print(f"\n{'chain (3 signed hops)':<24}{'decode ms/token':>16}{'p99':>8}{'tokens':>8}")
        for name in ("off", "on"):
            print(f"{'trust ' + name:<24}{chain[name]['decode_ms']:>16.2f}{chain[name]['decode_ms_p99']:>8.2f}"
                  f"{chain[name]['tokens']:>8}")
        chain["decode_ratio_on_vs_off"] = chain["on"]["decode_ms"] / chain["off"]["decode_ms"]
        print(f"trust on / off: {chain['decode_ratio_on_vs_off']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
