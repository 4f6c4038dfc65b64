"""Failover: how long after a host is killed (SIGKILL) the first token comes again, and how many requests are lost.

Real processes on this machine: the coordinator, the gateway and host agents (emulated compute 4x, 2x, 1x, so the
coordinator puts the model on the fastest). Each round asks two requests, waits until they stream, kills the host
agent that holds the modules, and times from the kill to the first token streamed after it (the coordinator has
seen the host go, re-placed its modules, an agent has loaded them, the gateway has replayed the requests); then a
spare agent (0.5x) is started so the fleet keeps three hosts. A request is lost when it gets no final answer or an
error.

    python bench/failover.py [--kills 10] [--json PATH]
"""

from __future__ import annotations

import argparse
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

import rclpy
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.msg import InferenceRequest, InferenceResult, PlacementPlan
from rclpy.executors import SingleThreadedExecutor

from edge_lam.processes import stop_processes
from edge_lam.ros.qos import CONTROL, LATCHED
from edge_lam.ros.spin import spin_until

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 64
PROMPTS = ["Explain how a robot arm picks a box.", "List four sensors of a self-driving car."]


class Fleet:
    """The processes of the fleet, in a namespace of their own."""

    def __init__(self, log) -> None:
        self.namespace = f"failover_{uuid.uuid4().hex[:8]}"
        self.log = log
        self.processes: list[subprocess.Popen] = []
        self.agents: dict[str, subprocess.Popen] = {}

    def args(self, *params: str) -> list[str]:
        args = ["--ros-args", "-r", f"__ns:=/{self.namespace}", "-p", f"adverts_topic:=/{self.namespace}/adverts",
                "-p", f"plan_topic:=/{self.namespace}/plan", "-p", f"model:={MODEL}"]
        for param in params:
            args += ["-p", param]
        return args

    def start(self, *command) -> subprocess.Popen:
        process = subprocess.Popen([str(c) for c in command], stdout=self.log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def agent(self, host_id: str, scale: float) -> None:
        self.agents[host_id] = self.start(LIB / "host_agent", *self.args(f"host_id:={host_id}",
                                                                          f"compute_scale:={scale}"),
                                          "-r", f"__node:=agent_{host_id}")

    def stop(self) -> None:
        stop_processes(self.processes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="hosts to kill, one per round (default 10)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the fleet's logs, shown if the run fails
    fleet = Fleet(log)
    rclpy.init()
    node = rclpy.create_node("failover_bench", namespace=fleet.namespace)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    results: list[tuple[float, InferenceResult]] = []
    plans: list[PlacementPlan] = []
    node.create_subscription(InferenceResult, "results", lambda r: results.append((time.monotonic(), r)), CONTROL)
    node.create_subscription(PlacementPlan, f"/{fleet.namespace}/plan", plans.append, LATCHED)
    requests = node.create_publisher(InferenceRequest, "requests", CONTROL)

    def ask(prompt: str) -> str:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = MAX_NEW
        requests.publish(request)
        return request.request_id

    def final(request_id: str) -> InferenceResult | None:
        return next((r for _, r in results if r.request_id == request_id and r.final), None)

    def token_times(ids: list[str], since: float = 0.0) -> list[float]:
        return [t for t, r in results if t > since and r.request_id in ids and r.token_ids]

    times, lost, asked = [], 0, 0
    try:
        for host_id, scale in (("h0", 4.0), ("h1", 2.0), ("h2", 1.0)):
            fleet.agent(host_id, scale)
        fleet.start(LIB / "coordinator", *fleet.args("settle_s:=2.0"))
        fleet.start(LIB / "gateway", *fleet.args("step_timeout_s:=2.0"))
        if not spin_until(executor, lambda: requests.get_subscription_count() > 0 and plans, 120):
            raise TimeoutError("the fleet did not come up")
        def serving() -> bool:
            rid = ask("Hi")
            return spin_until(executor, lambda: final(rid), 10) and not final(rid).error_code

        if not spin_until(executor, serving, 180):
            raise TimeoutError("the fleet did not serve")
        for round_index in range(args.kills):
            ids = [ask(p) for p in PROMPTS]
            asked += len(ids)
            if not spin_until(executor, lambda ids=ids: len(token_times(ids)) >= 3, 60):
                raise TimeoutError("no tokens before the kill")
            victim = plans[-1].modules[0].host_id
            fleet.agents.pop(victim).send_signal(signal.SIGKILL)
            killed = time.monotonic()
            fleet.agent(f"spare{round_index}", 0.5)
            streamed = spin_until(executor, lambda ids=ids, killed=killed: token_times(ids, killed), 120)
            spin_until(executor, lambda ids=ids: all(final(i) for i in ids), 180)
            if streamed:
                times.append(min(token_times(ids, killed)) - killed)
            round_lost = sum(1 for i in ids if final(i) is None or final(i).error_code)
            lost += round_lost
            print(f"kill {round_index + 1}: {victim} -> first token after {times[-1] if streamed else float('nan'):.2f}"
                  f" s on {sorted({m.host_id for m in plans[-1].modules})}, {round_lost} requests lost", flush=True)
    except Exception:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
        fleet.stop()
    figures = {"kills": args.kills, "requests": asked, "failover_median_s": statistics.median(times),
               "failover_worst_s": max(times), "requests_lost": lost, "failover_s": times}
    print(f"{'kills':>5} | {'requests':>8} | {'kill -> first token median s':>28} | {'worst s':>7} | {'lost':>4}")
    print(f"{args.kills:>5} | {asked:>8} | {figures['failover_median_s']:28.2f} | {figures['failover_worst_s']:7.2f} | "
          f"{lost:>4}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
