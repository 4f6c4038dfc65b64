"""Inference that flows between robot and edge, per policy: chain, device, cascade and speculative (prompt-lookup and
early-exit drafts), on an emulated robot and edge, then speculative against the whole model on one host.

Emulated layout (one machine, the shards' emulation parameters): the robot is a 0.25x host (``compute_slowdown``
4) running the embedding, blocks 0-15 and the early exit ``exit:15`` with the gateway composed into the same process
(a robot asks its own questions); the edge is a 1x host running blocks 15-30 and the head behind a 20 ms / 100 Mbit/s
link each way (``input_link``, ``output_link``). Requests are reports: the reporter's prompt over real sensor
observations (``edge_lam.training.fleet_text``: camera bag classes and odometry windows; the reports the exits were
not trained on), greedy, ``--max-new-tokens`` each.
Per policy: time to first token, decode tokens/s, report latency, the share of tokens decided on the robot, the bytes
that crossed the robot's link per report (serialized ChainPackets on the two link topics), and quality against the
whole model (greedy token agreement position by position, exact reports, NLL per token of held-out text). Then the
edge is frozen (SIGSTOP) while requests run: ``degraded_answers`` is the share that still got an answer (from the
exit, flagged degraded). Last, on one host with no emulation, the split bench's 3-process layout with the gateway in
the first process, speculative (prompt lookup) against the whole model in this process, timed in alternation.

    python bench/flow.py [--reports 6] [--max-new-tokens 40] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import rclpy
import rclpy.executors
import torch
import yaml
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import ChainPacket, InferenceRequest, InferenceResult
from transformers import DynamicCache

from edge_lam.assets.cache import camera_bag_dir, evo_bags_dir
from edge_lam.model.decompose import describe
from edge_lam.model.exits import available_exits, load_exit
from edge_lam.model.loading import load_model, load_tokenizer
from edge_lam.processes import stop_processes
from edge_lam.reporting.verbalize import report_prompt
from edge_lam.ros.qos import CONTROL, TENSORS
from edge_lam.ros.spin import spin_until
from edge_lam.training.fleet_text import ODOMETRY_BAG, report_observations

MODEL = "smollm2-135m-instruct"
EXIT_LAYER = 15
LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
LINK = [0.02, 100e6]  # 20 ms, 100 Mbit/s each way
ROBOT_SLOWDOWN = 4.0  # a 0.25x robot
# name -> GenerationOptions fields. Prompt lookup runs first: it drafts from the gateway's earlier answers, and
# those of the same prompts under another policy would be a look at the answer sheet.
POLICIES = {
    "speculative_ngram": {"policy": "speculative", "drafter": "ngram"},
    "chain": {"policy": "chain"},
    "device": {"policy": "device"},
    "cascade": {"policy": "cascade"},
    "speculative_exit": {"policy": "speculative", "drafter": "exit"},
}
LINK_TOPICS = ["chain/hidden_15", "chain/output"]  # what crosses the robot's link, each way
ONE_HOST = [["embedding", "blocks:0:10"], ["blocks:10:20"], ["blocks:20:30", "head"]]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def heldout_report_prompts(count: int) -> list[str]:
    """Reporter prompts over real observations that the exits' training held out (every 4th of 32, then more)."""
    observations = report_observations(camera_bag_dir(), evo_bags_dir() / ODOMETRY_BAG, 32 + count)
    held = [o for i, o in enumerate(observations[:32]) if i % 4 == 2] + observations[32:]
    return [report_prompt(o) for o in held[:count]]


def chat(tokenizer, prompt: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


class WholeModel:
    """The whole model in this process: greedy answers, held-out NLL, and its own decode speed (the baseline)."""

    def __init__(self) -> None:
        self.model, self.tokenizer = load_model(MODEL), load_tokenizer(MODEL)

    @torch.inference_mode()
    def answer(self, prompt: str, max_new: int) -> tuple[list[int], float]:
        """Greedy tokens with a KV cache, one at a time, and the decode tokens/s after the first."""
        cache, ids, tokens = DynamicCache(config=self.model.config), torch.tensor([chat(self.tokenizer, prompt)]), []
        first = None
        for _ in range(max_new):
            token = int(self.model(ids, past_key_values=cache, use_cache=True).logits[0, -1].argmax())
            tokens.append(token)
            first = first or time.perf_counter()
            if token == self.tokenizer.eos_token_id:
                break
            ids = torch.tensor([[token]])
        return tokens, (len(tokens) - 1) / (time.perf_counter() - first) if len(tokens) > 1 else 0.0


@torch.inference_mode()
def heldout_nll(whole: WholeModel, texts: list[str], threshold: float) -> dict[str, float]:
    """Mean NLL per token of held-out text (nats) under each policy's model: the whole model (chain, speculative),
    the exit (device), and per position the exit where it is confident, else the whole model (cascade)."""
    exit_head = load_exit(describe(whole.model), EXIT_LAYER)
    sums = {"whole": 0.0, "device": 0.0, "cascade": 0.0}
    count = 0
    for text in texts:
        ids = torch.tensor([chat(whole.tokenizer, text)])
        out = whole.model(ids, output_hidden_states=True)
        targets = ids[0, 1:]
        whole_lp = torch.log_softmax(out.logits[0, :-1].float(), -1)
        exit_lp = torch.log_softmax(exit_head(out.hidden_states[EXIT_LAYER])[0, :-1].float(), -1)
        confident = exit_lp.exp().max(-1).values >= threshold
        whole_nll = -whole_lp.gather(1, targets[:, None])[:, 0]
        exit_nll = -exit_lp.gather(1, targets[:, None])[:, 0]
        sums["whole"] += float(whole_nll.sum())
        sums["device"] += float(exit_nll.sum())
        sums["cascade"] += float(torch.where(confident, exit_nll, whole_nll).sum())
        count += targets.numel()
    return {name: total / count for name, total in sums.items()}


@dataclass
class Answer:
    sent: float
    first: float
    final: float
    tokens: list[int]
    sources: list[int]
    result: InferenceResult
    link_bytes: int


class Driver:
    """This process's node: asks the gateway, times the chunks, counts the bytes on the robot's link topics."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("flow_bench", namespace=namespace, context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.chunks: list[tuple[float, InferenceResult]] = []
        self.link_bytes = 0
        self.node.create_subscription(InferenceResult, "results", self._chunk, CONTROL)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)
        self.counters = []

    def _chunk(self, result: InferenceResult) -> None:
        self.chunks.append((time.perf_counter(), result))

    def count(self, topics: list[str]) -> None:
        self.counters = [self.node.create_subscription(ChainPacket, t, self._count, TENSORS, raw=True) for t in topics]

    def _count(self, raw: bytes) -> None:
        self.link_bytes += len(raw)

    def wait(self, done, timeout_s: float) -> bool:
        return spin_until(self.executor, done, timeout_s, period_s=1.0)

    def send(self, prompt: str, max_new: int, **options) -> str:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new
        for name, value in options.items():
            setattr(request.options, name, value)
        self.requests.publish(request)
        return request.request_id

    def finished(self, request_id: str) -> bool:
        return any(r.final and r.request_id == request_id for _, r in self.chunks)

    def ask(self, prompt: str, max_new: int, timeout_s: float = 300, **options) -> Answer:
        bytes_before, sent = self.link_bytes, time.perf_counter()
        request_id = self.send(prompt, max_new, **options)
        if not self.wait(lambda: self.finished(request_id), timeout_s):
            raise TimeoutError(f"no answer in {timeout_s} s")
        return self.answer(request_id, sent, self.link_bytes - bytes_before)

    def answer(self, request_id: str, sent: float, link_bytes: int = 0) -> Answer:
        mine = [(t, r) for t, r in self.chunks if r.request_id == request_id]
        with_tokens = [t for t, r in mine if r.token_ids]
        final = mine[-1][1]
        return Answer(sent, with_tokens[0] if with_tokens else mine[-1][0], mine[-1][0],
                      [t for _, r in mine for t in r.token_ids], [s for _, r in mine for s in r.token_sources],
                      final, link_bytes)

    def wait_until_serving(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            asked = self.send("Hi", 1)
            if self.wait(lambda asked=asked: self.finished(asked), 5) and not self.answer(asked, 0).result.error_code:
                return
            time.sleep(0.5)
        raise TimeoutError("the chain did not come up")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@contextlib.contextmanager
def fleet(params: dict, commands: list[list[str]]) -> Iterator[tuple[Driver, list[subprocess.Popen]]]:
    """Start ``commands`` with ``params`` in a namespace of their own, and a driver there; stop them all."""
    namespace = f"flow_{uuid.uuid4().hex[:8]}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(params, file)
    args = ["--ros-args", "-r", f"__ns:=/{namespace}", "--params-file", file.name]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the processes' logs, shown if the run fails
    processes = [subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT) for command in commands]
    driver = Driver(namespace)
    try:
        driver.wait_until_serving()
        yield driver, processes
    except Exception:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        driver.close()
        for process in processes:  # a frozen process must run again to hear SIGINT
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        stop_processes(processes)
        os.unlink(file.name)


def emulated_params(threshold: float, draft_tokens: int) -> dict:
    shard = {"model": MODEL}
    return {
        "/**/robot_shard": {"ros__parameters": {**shard, "modules": ["embedding", "blocks:0:15", f"exit:{EXIT_LAYER}"],
                                                "output_topic": LINK_TOPICS[0], "compute_slowdown": ROBOT_SLOWDOWN,
                                                "host_id": "robot"}},
        "/**/edge_shard": {"ros__parameters": {**shard, "modules": ["blocks:15:30", "head"],
                                               "input_topic": LINK_TOPICS[0], "output_topic": LINK_TOPICS[1],
                                               "input_link": list(LINK), "output_link": list(LINK),
                                               "host_id": "edge"}},
        "/**/gateway": {"ros__parameters": {"model": MODEL, "plan_topic": "", "chain_output_topic": LINK_TOPICS[1],
                                            "cascade_threshold": threshold, "draft_tokens": draft_tokens,
                                            "degrade_after_s": 2.0}},
    }


@dataclass
class PolicyRun:
    answers: list[Answer] = field(default_factory=list)

    def figures(self, reference: list[list[int]]) -> dict:
        ok = [a for a in self.answers if not a.result.error_code]
        tokens = sum(len(a.tokens) for a in ok)
        decode = [(len(a.tokens) - 1) / (a.final - a.first) for a in ok if len(a.tokens) > 1 and a.final > a.first]
        agree = [sum(x == y for x, y in zip(a.tokens, ref, strict=False)) / max(len(ref), 1)
                 for a, ref in zip(self.answers, reference, strict=True)]
        return {
            "ttft_s_p50": statistics.median(a.first - a.sent for a in ok),
            "ttft_s_p99": p99([a.first - a.sent for a in ok]),
            "tokens_per_s_p50": statistics.median(decode) if decode else 0.0,
            "report_s_p50": statistics.median(a.final - a.sent for a in ok),
            "report_s_p99": p99([a.final - a.sent for a in ok]),
            "robot_share": sum(s == InferenceResult.SOURCE_EXIT for a in ok for s in a.sources) / max(tokens, 1),
            "link_bytes_per_report": statistics.median(a.link_bytes for a in ok),
            "agreement": statistics.mean(agree),
            "exact": sum(a.tokens == ref for a, ref in zip(self.answers, reference, strict=True)) / len(reference),
            "accepted_per_pass": statistics.mean(
                (a.result.accepted + a.result.verify_passes) / a.result.verify_passes
                for a in ok if a.result.verify_passes) if any(a.result.verify_passes for a in ok) else 0.0,
            "errors": len(self.answers) - len(ok),
        }


def emulated(prompts: list[str], reference: list[list[int]], max_new: int, threshold: float,
             draft_tokens: int, cut_requests: int) -> tuple[dict[str, dict], float]:
    commands = [[LIB / "compose", "shard:robot_shard", "gateway:gateway"], [LIB / "compose", "shard:edge_shard"]]
    with fleet(emulated_params(threshold, draft_tokens), commands) as (driver, processes):
        driver.count(LINK_TOPICS)
        driver.ask("Hi", 4)  # warm-up, not counted (nor a report's answer for prompt lookup to find)
        figures = {}
        for name, options in POLICIES.items():
            run = PolicyRun([driver.ask(prompt, max_new, **options) for prompt in prompts])
            figures[name] = run.figures(reference)
            print(f"  {name}: {figures[name]['report_s_p50']:.2f} s a report", file=sys.stderr)
        # Freeze the edge while requests run: each must still get an answer, from the robot's exit.
        request_ids = [driver.send(prompts[0], max_new)]
        driver.wait(lambda: any(r.token_ids for _, r in driver.chunks if r.request_id == request_ids[0]), 120)
        os.kill(processes[1].pid, signal.SIGSTOP)
        request_ids += [driver.send(prompt, max_new) for prompt in prompts[1:cut_requests]]
        driver.wait(lambda: all(driver.finished(r) for r in request_ids), 300)
        answered = [driver.answer(r, 0).result for r in request_ids if driver.finished(r)]
        degraded = sum(not r.error_code for r in answered) / len(request_ids)
        os.kill(processes[1].pid, signal.SIGCONT)
        if not all(r.degraded for r in answered):
            print("  warning: an answer during the cut is not flagged degraded", file=sys.stderr)
        return figures, degraded


def one_host(prompts: list[str], whole: WholeModel, max_new: int, draft_tokens: int) -> dict:
    """Speculative (prompt lookup) over 3 processes vs the whole model here, alternating prompt by prompt."""
    topics = ["chain/input", "chain/hop_1", "chain/hop_2", "chain/output"]
    params = {f"/**/shard_{i}": {"ros__parameters": {"model": MODEL, "modules": modules, "input_topic": topics[i],
                                                     "output_topic": topics[i + 1]}}
              for i, modules in enumerate(ONE_HOST)}
    params["/**/gateway"] = {"ros__parameters": {"model": MODEL, "plan_topic": "", "exit_topic": "",
                                                 "draft_tokens": draft_tokens}}
    commands = [[LIB / "compose", "shard:shard_0", "gateway:gateway"],
                *([LIB / "compose", f"shard:shard_{i}"] for i in (1, 2))]
    speculative, chain, baseline, identical = [], [], [], True
    with fleet(params, commands) as (driver, _):
        driver.ask("Hi", 4)
        for prompt in prompts:
            tokens, rate = whole.answer(prompt, max_new)
            baseline.append(rate)
            for policy, rates in (("speculative", speculative), ("chain", chain)):
                answer = driver.ask(prompt, max_new, policy=policy, drafter="ngram")
                rates.append((len(answer.tokens) - 1) / (answer.final - answer.first))
                identical &= answer.tokens == tokens
    return {"speculative_tokens_per_s_p50": statistics.median(speculative),
            "chain_tokens_per_s_p50": statistics.median(chain), "whole_tokens_per_s_p50": statistics.median(baseline),
            "identical": identical}


def plot(figures: dict[str, dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, f in figures.items():
        axes.scatter(f["report_s_p50"], f["agreement"], s=60)
        axes.annotate(name, (f["report_s_p50"], f["agreement"]), textcoords="offset points", xytext=(6, 4))
    axes.set_xlabel("report latency, median (s)")
    axes.set_ylabel("greedy token agreement with the whole model")
    axes.set_title("Quality against latency per policy (robot 0.25x, 20 ms / 100 Mbit/s link)")
    axes.set_ylim(0, 1.05)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=6, help="reports asked per policy (default 6)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="tokens per report (default 40)")
    parser.add_argument("--draft-tokens", type=int, default=4, help="drafts per verification pass (default 4)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cascade threshold (default: the exit's calibrated one for 0.95 agreement)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--plot", type=pathlib.Path, default=pathlib.Path("flow.png"), help="PNG (default flow.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    whole = WholeModel()
    prompts = heldout_report_prompts(args.reports)
    threshold = args.threshold if args.threshold is not None else available_exits(MODEL)[EXIT_LAYER].threshold
    reference = [whole.answer(p, args.max_new_tokens)[0] for p in prompts]
    nll = heldout_nll(whole, prompts, threshold)
    print(f"emulated robot {1 / ROBOT_SLOWDOWN:.2f}x + edge 1x, link {LINK[0] * 1e3:.0f} ms / "
          f"{LINK[1] / 1e6:.0f} Mbit/s; cascade threshold {threshold:.2f}", file=sys.stderr)
    figures, degraded = emulated(prompts, reference, args.max_new_tokens, threshold, args.draft_tokens,
                                 cut_requests=min(4, len(prompts)))
    for name, f in figures.items():
        f["nll"] = nll["device"] if name == "device" else nll["cascade"] if name == "cascade" else nll["whole"]
    host = one_host(prompts, whole, args.max_new_tokens, args.draft_tokens)
    chain = figures["chain"]
    figures = {name: figures[name] for name in ("chain", "device", "cascade", "speculative_ngram", "speculative_exit")}
    print("\n| policy | TTFT p50 (s) | p99 | decode tok/s p50 | vs chain | report p50 (s) | p99 | on robot | "
          "link bytes/report | agreement | exact | NLL | tokens/pass |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {f['ttft_s_p50']:.3f} | {f['ttft_s_p99']:.3f} | {f['tokens_per_s_p50']:.1f} | "
              f"{f['tokens_per_s_p50'] / chain['tokens_per_s_p50']:.2f} | {f['report_s_p50']:.2f} | "
              f"{f['report_s_p99']:.2f} | {f['robot_share']:.2f} | {f['link_bytes_per_report'] / 1e3:.0f} kB | "
              f"{f['agreement']:.2f} | {f['exact']:.2f} | {f['nll']:.2f} | {f['accepted_per_pass']:.2f} |")
    print(f"\none host, 3 processes, no emulation: speculative {host['speculative_tokens_per_s_p50']:.1f} tok/s, "
          f"chain {host['chain_tokens_per_s_p50']:.1f}, whole model in one process "
          f"{host['whole_tokens_per_s_p50']:.1f} (paired); output identical: {host['identical']}")
    print(f"requests answered while the edge was frozen: {degraded:.2f}")
    keys = {
        "speculative_vs_chain_tokens_per_s": figures["speculative_ngram"]["tokens_per_s_p50"]
        / chain["tokens_per_s_p50"],
        "speculative_exit_vs_chain_tokens_per_s": figures["speculative_exit"]["tokens_per_s_p50"]
        / chain["tokens_per_s_p50"],
        "speculative_vs_whole_1host": host["speculative_tokens_per_s_p50"] / host["whole_tokens_per_s_p50"],
        "speculative_1host_identical": host["identical"],
        "cascade_agreement": figures["cascade"]["agreement"],
        "cascade_device_share": figures["cascade"]["robot_share"],
        "degraded_answers": degraded,
        "cascade_threshold": threshold,
    }
    print("\n" + "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in keys.items()))
    plot(figures, args.plot)
    if args.json:
        args.json.write_text(json.dumps({**keys, "policies": figures, "one_host": host}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
