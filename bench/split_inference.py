"""SmolLM2 split across processes over DDS vs. the whole model in one process: time to first token, decode speed and
bytes on the wire.

The baseline runs the model in this process with a KV cache, one token at a time, as a gateway would; the
``modules_1proc`` run chains the 3-process layout's modules in one process without DDS, to separate what the cut
costs from what the processes and the transport cost. Each split layout starts its shard processes (real rclpy over
Fast DDS, edge_lam's profile) with the gateway composed into the first one's process, as a robot that asks and runs
the first modules would (``compose shard:shard_0 gateway:gateway``): N processes are N hops a token; the
``3proc_gateway_apart`` run puts the gateway in a process of its own (a fourth hop). ``3proc_pipes`` is a control
without ROS: the same three modules' processes passing pickled fp16 hidden states over OS pipes, to tell what DDS
and rclpy cost from what any chain of processes costs on this machine. This process sends requests on
the gateway's topic and times the streamed chunks as they arrive. Bytes are those of the serialized ChainPackets
seen on every chain topic during one more request after the timed ones: a subscriber counting them during the timed
requests would add a process waking up at every hop to what is measured. Greedy decoding throughout, torch at one
thread in every process (decode is memory-bound: a second thread does not help here).

The machine this runs on changes speed by tens of percent from one minute to the next (a shared VM), so every run
also times the whole model in its own process right before each of its requests, and its ratio is against that
paired baseline rather than against a run made minutes earlier.

    python bench/split_inference.py [--max-new-tokens 32] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import rclpy
import torch
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult
from transformers import DynamicCache

from edge_lam.chain.shard import ShardCore
from edge_lam.descriptors import ModuleSpec
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.model.sampling import Sampling
from edge_lam.processes import stop_processes
from edge_lam.ros.qos import CONTROL, TENSORS
from edge_lam.ros.spin import spin_until

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Describe what a warehouse robot does during one shift.",
    "Explain how a robot vacuum finds its way around a room.",
    "Write a short story about a rover on Mars.",
    "List the steps to charge a delivery robot's battery.",
]
# name -> the modules of each shard process, in chain order
LAYOUTS = {
    "2proc": [["embedding", "blocks:0:15"], ["blocks:15:30", "head"]],
    "3proc": [["embedding", "blocks:0:10"], ["blocks:10:20"], ["blocks:20:30", "head"]],
}
GATEWAY_APART = "_gateway_apart"  # a layout name with this suffix runs the gateway in a process of its own
LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def chat_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def decode_prompt(step, session, ids: torch.Tensor, max_new: int) -> tuple[float, list[float]]:
    """Prefill then one token at a time in this process: ``step(session, ids)`` returns the next token [1, 1]."""
    with torch.inference_mode():
        start = time.perf_counter()
        token = step(session, ids)
        ttft, steps = time.perf_counter() - start, []
        for _ in range(max_new - 1):
            t0 = time.perf_counter()
            token = step(session, token)
            steps.append(time.perf_counter() - t0)
    return ttft, steps


class WholeModel:
    """The baseline: the whole model with its KV cache, one token at a time in this process, as a gateway would."""

    def __init__(self) -> None:
        self.model, self.tokenizer = load_model(MODEL), load_tokenizer(MODEL)

    def step(self, cache: DynamicCache, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

    def run(self, prompt: str, max_new: int) -> tuple[float, list[float]]:
        return decode_prompt(self.step, DynamicCache(config=self.model.config), chat_ids(self.tokenizer, prompt),
                             max_new)


class Figures:
    """Per-prompt times of a run and of the whole model measured right before it (the paired baseline)."""

    def __init__(self) -> None:
        self.ttft, self.decode, self.baseline_ttft, self.baseline_decode = [], [], [], []

    def add(self, ttft: float, decode: list[float], baseline: tuple[float, list[float]]) -> None:
        self.ttft.append(ttft)
        self.decode.extend(decode)
        self.baseline_ttft.append(baseline[0])
        self.baseline_decode.extend(baseline[1])

    def result(self, **extra: float) -> dict:
        return {"ttft": self.ttft, "decode": self.decode, "baseline_ttft": self.baseline_ttft,
                "baseline_decode": self.baseline_decode, "bytes_per_token": 0.0, "outside_modules": 0.0, **extra}


def whole_model(max_new: int, rounds: int) -> dict:
    """The whole model alone (its own baseline)."""
    whole, figures = WholeModel(), Figures()
    whole.run(PROMPTS[0], max_new)  # warm-up, not counted
    for prompt in PROMPTS * rounds:
        ttft, decode = whole.run(prompt, max_new)
        figures.add(ttft, decode, (ttft, decode))
    return figures.result()


def modules_in_process(layout: list[list[str]], max_new: int, rounds: int) -> dict:
    """The modules of a split layout chained in this process, no DDS: what the cut itself costs."""
    whole, figures = WholeModel(), Figures()
    cores = [ShardCore(load_model(MODEL), [ModuleSpec.parse(m) for m in modules]) for modules in layout]

    def step(session: dict, ids: torch.Tensor) -> torch.Tensor:
        x = {"input_ids": ids}
        for core in cores:
            x = core.step(x, session["id"], session["position"], False, Sampling(), 0).tensors
        session["position"] += ids.shape[1]
        return x["next_token"].view(1, 1)

    def run(prompt: str) -> tuple[float, list[float]]:
        return decode_prompt(step, {"id": uuid.uuid4().hex, "position": 0}, chat_ids(whole.tokenizer, prompt), max_new)

    run(PROMPTS[0])  # warm-up, not counted
    for prompt in PROMPTS * rounds:
        baseline = whole.run(prompt, max_new)
        figures.add(*run(prompt), baseline)
    return figures.result()


def pipe_shard(modules: list[str], first: bool, inbox, outbox) -> None:
    """A process of the ``3proc_pipes`` control: one ShardCore, packets in and out over OS pipes, no ROS.
    "ready" and the final None travel down the chain like packets."""
    torch.set_num_threads(1)
    core = ShardCore(load_model(MODEL), [ModuleSpec.parse(m) for m in modules])
    if not first:
        inbox.recv()  # the previous process is ready
    outbox.send("ready")
    while (packet := inbox.recv()) is not None:
        tensors, session_id, position, seconds = packet
        step = core.step(tensors, session_id, position, False, Sampling(), 0)
        outputs, timings = step.tensors, step.timings
        outbox.send(({k: v.half() if v.is_floating_point() else v for k, v in outputs.items()}, session_id, position,
                     seconds + sum(s for _, s in timings)))
    outbox.send(None)


def modules_over_pipes(layout: list[list[str]], max_new: int, rounds: int) -> dict:
    """A control without ROS: the split layout's modules in as many processes, hidden states pickled (fp16) over
    OS pipes. What a chain of processes costs here whatever carries the packets."""
    context = multiprocessing.get_context("spawn")
    links = [context.Pipe() for _ in range(len(layout) + 1)]  # process i reads links[i][1], writes links[i + 1][0]
    processes = [context.Process(target=pipe_shard, args=(modules, i == 0, links[i][1], links[i + 1][0]),
                                 daemon=True) for i, modules in enumerate(layout)]
    for process in processes:
        process.start()
    try:
        if not links[-1][1].poll(300) or links[-1][1].recv() != "ready":
            raise TimeoutError("the pipe shards did not start")
        whole, figures = WholeModel(), Figures()

        def step(session: dict, ids: torch.Tensor) -> torch.Tensor:
            links[0][0].send(({"input_ids": ids}, session["id"], session["position"], 0.0))
            if not links[-1][1].poll(60):
                raise TimeoutError("no answer from the pipe shards")
            outputs, _, _, seconds = links[-1][1].recv()
            session["position"] += ids.shape[1]
            session["modules_s"] += seconds
            return outputs["next_token"].view(1, 1)

        def run(prompt: str) -> tuple[float, list[float], float]:
            session = {"id": uuid.uuid4().hex, "position": 0, "modules_s": 0.0}
            return *decode_prompt(step, session, chat_ids(whole.tokenizer, prompt), max_new), session["modules_s"]

        run(PROMPTS[0])  # warm-up, not counted
        modules_s = total_s = 0.0
        for prompt in PROMPTS * rounds:
            baseline = whole.run(prompt, max_new)
            ttft, decode, seconds = run(prompt)
            figures.add(ttft, decode, baseline)
            modules_s, total_s = modules_s + seconds, total_s + ttft + sum(decode)
        return figures.result(outside_modules=1 - modules_s / total_s)
    finally:
        links[0][0].send(None)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


class Driver:
    """This process's node: sends requests to a gateway, times the chunks, counts the bytes on chain topics."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("split_inference_bench", namespace=namespace, context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.chunks: list[tuple[float, InferenceResult]] = []
        self.bytes = 0
        self.results = self.node.create_subscription(InferenceResult, "results",
                                                     lambda r: self.chunks.append((time.perf_counter(), r)), CONTROL)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)

    def count_bytes(self, chain_topics: list[str], timeout_s: float = 30) -> None:
        """From now on, count the serialized bytes of every packet on the chain's topics."""
        counters = [self.node.create_subscription(ChainPacket, topic, self.count, TENSORS, raw=True)
                    for topic in chain_topics]
        self.wait_for(lambda: all(c.get_publisher_count() > 0 for c in counters), timeout_s)
        settled = time.monotonic() + 0.5  # a writer may match a reader a little after the reader saw the writer
        self.wait_for(lambda: time.monotonic() > settled, timeout_s)

    def count(self, raw: bytes) -> None:
        self.bytes += len(raw)

    def wait_for(self, done, timeout_s: float) -> None:
        # A callback ends the wait at once; a short period would only wake this process ~100 times a second while
        # the modules compute.
        if not spin_until(self.executor, done, timeout_s, period_s=1.0):
            raise TimeoutError("no answer from the chain")

    def wait_for_gateway(self, timeout_s: float) -> None:
        self.wait_for(lambda: self.requests.get_subscription_count() > 0 and self.results.get_publisher_count() > 0,
                        timeout_s)

    def ask(self, prompt: str, max_new: int, timeout_s: float = 300) -> tuple[float, list[InferenceResult]]:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new
        self.chunks.clear()
        sent = time.perf_counter()
        self.requests.publish(request)
        self.wait_for(lambda: any(r.final and r.request_id == request.request_id for _, r in self.chunks), timeout_s)
        return sent, [(t, r) for t, r in self.chunks if r.request_id == request.request_id]

    def ask_all(self, prompts: list[str], max_new: int, timeout_s: float = 600) -> dict[str, list]:
        """Send every prompt at once; each request's (arrival time, chunk) list, by request id."""
        requests = [InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt) for prompt in prompts]
        self.chunks.clear()
        for request in requests:
            request.options.max_new_tokens = max_new
            self.requests.publish(request)
        ids = {r.request_id for r in requests}
        self.wait_for(lambda: len({r.request_id for _, r in self.chunks if r.final} & ids) == len(ids), timeout_s)
        return {i: [(t, r) for t, r in self.chunks if r.request_id == i] for i in ids}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@contextlib.contextmanager
def running_chain(layout: list[list[str]], shard_params: dict, gateway_apart: bool = False,
                  gateway_params: dict | None = None) -> Iterator[tuple[Driver, list[str], list[subprocess.Popen]]]:
    """Shard processes for ``layout`` (each with ``shard_params``) and a gateway, up and answering; yields the driver,
    the chain's topics and the processes (the gateway composed into the first unless ``gateway_apart``). Their
    logs are shown if the body fails."""
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    topics = ["chain/input", *(f"chain/hop_{i}" for i in range(1, len(layout))), "chain/output"]
    params = {f"/**/shard_{i}": {"ros__parameters": {
        "model": MODEL, "modules": modules, "input_topic": topics[i], "output_topic": topics[i + 1], **shard_params,
    }} for i, modules in enumerate(layout)}
    params["/**/gateway"] = {"ros__parameters": {"model": MODEL, "chain_input_topic": topics[0],
                                                 "chain_output_topic": topics[-1], **(gateway_params or {})}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(params, file)
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", file.name]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the processes' logs, shown if the run fails
    commands = [[LIB / "shard", *args, "-r", f"__node:=shard_{i}"] for i in range(len(layout))]
    if gateway_apart:
        commands.append([LIB / "gateway", *args])
    else:
        commands[0] = [LIB / "compose", "shard:shard_0", "gateway:gateway", *args]
    processes = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) for command in commands]
    driver = Driver(namespace)
    try:
        driver.wait_for_gateway(60)
        deadline = time.monotonic() + 120
        # The gateway refuses until the shards have loaded and connected, and an answer sent before its writer has
        # matched our reader is lost: ask again until one comes back that is not a refusal.
        while True:
            try:
                _, chunks = driver.ask("Hi", 1, timeout_s=5)
                if chunks[-1][1].error_code != InferenceResult.ERROR_MODULE_UNAVAILABLE:
                    break
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the chain did not come up")
            time.sleep(0.5)
        yield driver, topics, processes
    except Exception:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        driver.close()
        stop_processes(processes)
        os.unlink(file.name)


def split(layout: list[list[str]], wire_dtype: str, max_new: int, rounds: int, gateway_apart: bool = False) -> dict:
    with running_chain(layout, {"wire_dtype": wire_dtype}, gateway_apart) as (driver, topics, _):
        whole, figures, outside, total = WholeModel(), Figures(), 0.0, 0.0
        driver.ask(PROMPTS[0], max_new)  # warm-up, not counted
        whole.run(PROMPTS[0], max_new)
        for prompt in PROMPTS * rounds:
            baseline = whole.run(prompt, max_new)  # the shard processes idle meanwhile
            sent, chunks = driver.ask(prompt, max_new)
            if chunks[-1][1].error_code:
                raise RuntimeError(chunks[-1][1].error_message)
            arrivals = [t for t, r in chunks if r.token_ids]
            figures.add(arrivals[0] - sent, [b - a for a, b in itertools.pairwise(arrivals)], baseline)
            stages = {t.stage: t.seconds for t in chunks[-1][1].timings}
            outside, total = outside + stages["transfer_and_queueing"], total + stages["total"]
        driver.count_bytes(topics)
        _, chunks = driver.ask(PROMPTS[0], max_new)
        tokens = sum(1 for _, r in chunks if r.token_ids)
        return figures.result(bytes_per_token=driver.bytes / tokens, outside_modules=outside / total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="times each prompt is asked (default 2)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one run, in a fresh process: whole or LAYOUT:DTYPE
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        if args.run == "whole":
            run = whole_model(args.max_new_tokens, args.rounds)
        elif args.run == "modules_1proc":
            run = modules_in_process(LAYOUTS["3proc"], args.max_new_tokens, args.rounds)
        elif args.run == "3proc_pipes":
            run = modules_over_pipes(LAYOUTS["3proc"], args.max_new_tokens, args.rounds)
        else:
            layout, wire_dtype = args.run.split(":")
            apart = layout.endswith(GATEWAY_APART)
            run = split(LAYOUTS[layout.removesuffix(GATEWAY_APART)], wire_dtype, args.max_new_tokens, args.rounds,
                        gateway_apart=apart)
        print(json.dumps(run))
        return 0

    env = dict(os.environ, ROS_DOMAIN_ID=str(100 + os.getpid() % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    runs = {}
    splits = [f"{layout}:{dtype}" for layout in LAYOUTS for dtype in ("float32", "float16")]
    splits.append(f"3proc{GATEWAY_APART}:float16")
    for name in ["whole", "modules_1proc", "3proc_pipes", *splits]:
        done = subprocess.run([sys.executable, __file__, "--run", name, "--max-new-tokens", str(args.max_new_tokens),
                               "--rounds", str(args.rounds)], env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"run {name} failed:\n{done.stderr[-5000:]}")
        runs[name.replace(":float", "_fp")] = json.loads(done.stdout.splitlines()[-1])

    figures = {}
    print(f"SmolLM2-135M-Instruct, greedy, {len(PROMPTS)} prompts x {args.rounds} rounds x {args.max_new_tokens} new "
          "tokens, 1 torch thread per process; milliseconds; ratio against the whole model timed right before each "
          "request (paired)")
    print(f"{'run':>24} | {'TTFT p50':>8} {'p99':>7} | {'decode/token p50':>16} {'p99':>7} | {'tokens/s':>8} | "
          f"{'whole p50':>9} | {'ratio':>5} | {'bytes/token':>11} | {'outside modules':>15}")
    for name, run in runs.items():
        rate = 1 / statistics.median(run["decode"])
        baseline_rate = 1 / statistics.median(run["baseline_decode"])
        row = {
            "ttft_p50_ms": 1e3 * statistics.median(run["ttft"]), "ttft_p99_ms": 1e3 * p99(run["ttft"]),
            "decode_p50_ms": 1e3 * statistics.median(run["decode"]), "decode_p99_ms": 1e3 * p99(run["decode"]),
            "decode_tokens_per_s": rate, "paired_whole_decode_p50_ms": 1e3 / baseline_rate,
            "decode_ratio_vs_whole": rate / baseline_rate,
            "bytes_per_token": run["bytes_per_token"], "share_outside_modules": run["outside_modules"],
        }
        figures[name] = row
        print(f"{name:>24} | {row['ttft_p50_ms']:8.1f} {row['ttft_p99_ms']:7.1f} | {row['decode_p50_ms']:16.1f} "
              f"{row['decode_p99_ms']:7.1f} | {rate:8.1f} | {row['paired_whole_decode_p50_ms']:9.1f} | "
              f"{row['decode_ratio_vs_whole']:5.2f} | {row['bytes_per_token']:11.0f} | "
              f"{100 * row['share_outside_modules']:14.1f}%")
    if args.json:
        args.json.write_text(json.dumps({
            "max_new_tokens": args.max_new_tokens, "prompts": len(PROMPTS), "rounds": args.rounds, "runs": figures,
            "decode_ratio_3proc_fp16": figures["3proc_fp16"]["decode_ratio_vs_whole"],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
