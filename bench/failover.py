"""Failover: how long after a process is killed (SIGKILL) the fleet serves again, and whether any request is lost.

Real processes on this machine, in a namespace of their own: three host agents (emulated compute 4x, 2x, 1x, so the
coordinator puts the model on the fastest and its standby copy on the next), a coordinator and a standby
coordinator, a gateway and a standby gateway. Two requests stream on the requests topic and a goal of the generate
action streams its feedback in every round; once they stream, one process is killed, chosen by role:

- ``host``: the agent whose host runs the chain's first module. Timed from the kill to the first token streamed
  after it (the coordinator saw the host go, re-routed to the standby copy, the gateway replayed).
- ``gateway``: the active gateway. Timed from the kill to the first chunk the standby streams.
- ``coordinator``: the active coordinator. Nothing streaming depends on it; timed from the kill to the standby's
  first plan (its version continues the latched one).
- ``baseline``: as ``host``, with ``standby_copies:=false``: what a loss cost before standbys (a model load).

Then a fresh process of the killed kind starts (a spare agent at 0.5x, or a new standby) and the next round waits
until it is ready. A request is lost when it gets no final chunk or an error; duplicated when it gets two finals;
a chunk is repeated when its index comes twice with the same tokens (a subscriber keys chunks on their index), and
a request is wrong when an index comes with other tokens or one is missing. A goal is lost when its result does not
come or says other than succeeded, and wrong when the feedback heard is not the beginning of its result (rclpy's
action client drops feedback that comes after the result, so a goal's last chunk may be heard only in its result).

    python bench/failover.py [--kills 100] [--roles host,gateway,coordinator,baseline] [--baseline-kills 10]
                             [--json PATH]

``--kills`` counts the kills of all the roles together (100: 34 hosts, 33 gateways, 33 coordinators); the
baseline's are counted apart. The keys ``failover_median_s`` and ``failover_worst_s`` are over the kills of every
role but the baseline; each role's own figures are under its name.
"""

from __future__ import annotations

import argparse
import collections
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
from action_msgs.msg import GoalStatus
from ament_index_python.packages import get_package_prefix
from edge_lam_msgs.action import Generate as GenerateAction
from edge_lam_msgs.msg import ComputeAdvert, InferenceRequest, InferenceResult, PlacementPlan
from rcl_interfaces.msg import Log
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from edge_lam.processes import stop_processes
from edge_lam.ros.fastdds_shm import clean_zombies
from edge_lam.ros.qos import ADVERTS_READER, CONTROL, LATCHED
from edge_lam.ros.spin import spin_until

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
MODEL = "smollm2-135m-instruct"
MAX_NEW = 40
PROMPTS = ["Explain how a robot arm picks a box.", "List four sensors of a self-driving car."]
GOAL_PROMPT = "Why does a mobile robot need a map?"  # sent as a goal of the generate action
ROLES = ("host", "gateway", "coordinator", "baseline")


class Fleet:
    """The processes of one fleet, in a namespace of their own."""

    def __init__(self, log, standby_copies: bool) -> None:
        self.namespace = f"failover_{uuid.uuid4().hex[:8]}"
        self.log = log
        self.standby_copies = standby_copies
        self.processes: list[subprocess.Popen] = []
        self.agents: dict[str, subprocess.Popen] = {}
        self.coordinators: list[subprocess.Popen] = []  # the active one first
        self.gateways: list[subprocess.Popen] = []  # the active one first

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

    def coordinator(self, standby: bool) -> str:
        name = f"coordinator_{uuid.uuid4().hex[:6]}"
        self.coordinators.append(self.start(
            LIB / "coordinator", *self.args("settle_s:=2.0", "use_load:=false", f"standby:={str(standby).lower()}",
                                            f"standby_copies:={str(self.standby_copies).lower()}"),
            "-r", f"__node:={name}"))
        return name

    def gateway(self, standby: bool) -> str:
        name = f"gateway_{uuid.uuid4().hex[:6]}"
        self.gateways.append(self.start(LIB / "gateway", *self.args("step_timeout_s:=10.0",
                                                                    f"standby:={str(standby).lower()}"),
                                        "-r", f"__node:={name}"))
        return name

    def stop(self) -> None:
        stop_processes(self.processes)


class Watch:
    """What the bench hears: results per request, plans, adverts."""

    def __init__(self, namespace: str) -> None:
        self.node = rclpy.create_node("failover_bench", namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.chunks: dict[str, list[tuple[float, InferenceResult]]] = collections.defaultdict(list)
        self.plans: list[tuple[float, PlacementPlan]] = []
        self.hosted: dict[str, tuple[str, ...]] = {}
        self.node.create_subscription(InferenceResult, "results", self.on_result, CONTROL)
        self.node.create_subscription(PlacementPlan, f"/{namespace}/plan",
                                      lambda p: self.plans.append((time.monotonic(), p)), LATCHED)
        self.node.create_subscription(ComputeAdvert, f"/{namespace}/adverts", self.on_advert, ADVERTS_READER)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)
        self.actions = ActionClient(self.node, GenerateAction, "generate")
        self.results: dict[str, object] = {}  # a goal's request id -> its GetResult response (None: refused)
        self.logs: list[Log] = []  # what the fleet's nodes log about standbys
        # transient-local: a line logged before this reader matched a new process's writer still comes
        self.node.create_subscription(Log, "/rosout", lambda m: "standby: " in m.msg and self.logs.append(m),
                                      QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                                                 durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def on_result(self, result: InferenceResult) -> None:
        self.chunks[result.request_id].append((time.monotonic(), result))

    def on_advert(self, advert: ComputeAdvert) -> None:
        self.hosted[advert.host_id] = tuple(advert.modules_hosted)

    def ask(self, prompt: str) -> str:
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = MAX_NEW
        self.requests.publish(request)
        return request.request_id

    def goal(self, prompt: str) -> str:
        """A goal of the generate action: its feedback chunks go with the topic's results, its result apart."""
        request = InferenceRequest(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = MAX_NEW
        sent = self.actions.send_goal_async(GenerateAction.Goal(request=request),
                                            feedback_callback=lambda f: self.on_result(f.feedback.chunk))
        sent.add_done_callback(lambda future, rid=request.request_id: self._ask_result(rid, future.result()))
        return request.request_id

    def _ask_result(self, request_id: str, handle) -> None:
        if handle is None or not handle.accepted:
            self.results[request_id] = None
            return
        handle.get_result_async().add_done_callback(
            lambda future: self.results.__setitem__(request_id, future.result()))

    def finals(self, request_id: str) -> list[InferenceResult]:
        return [r for _, r in self.chunks[request_id] if r.final]

    def first_after(self, ids: list[str], since: float) -> float | None:
        times = [t for i in ids for t, r in self.chunks[i] if t > since and r.token_ids]
        return min(times) if times else None

    def spin_until(self, condition, timeout_s: float) -> bool:
        return spin_until(self.executor, condition, timeout_s)

    def plan(self) -> PlacementPlan | None:
        return self.plans[-1][1] if self.plans else None

    def standbys_ready(self) -> bool:
        """The plan in force has its copies, and their hosts advertise them loaded."""
        plan = self.plan()
        if plan is None or not plan.standbys:
            return False
        return all(s.module_id in self.hosted.get(s.host_id, ()) for s in plan.standbys)

    def primaries_ready(self) -> bool:
        plan = self.plan()
        return plan is not None and all(m.module_id in self.hosted.get(m.host_id, ()) for m in plan.modules)

    def standing_by(self, node_name: str) -> bool:
        """The standby ``node_name`` has heard the active process (a plan of its, or its progress writer)."""
        return any(log.name.endswith(node_name) and ("following plan" in log.msg or "is alive" in log.msg)
                   for log in self.logs)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def outcome(watch: Watch, ids: list[str], goals: list[str]) -> tuple[int, int, int, int, list[str]]:
    """Of ``ids`` (topic requests and ``goals``): requests lost (no final, or an error; for a goal also no result, or
    one that did not succeed), duplicated (two finals), with a chunk sent again (an index twice with the same tokens:
    the last chunk a killed gateway published may not have reached its standby), and wrong (an index twice with other
    tokens, a gap in the indices, or a goal's result other than its feedback), and why each lost one was."""
    lost = duplicated = repeated = wrong = 0
    why: list[str] = []
    for request_id in goals:
        response = watch.results.get(request_id)
        if response is None or response.status != GoalStatus.STATUS_SUCCEEDED:
            lost += 1
            why.append(f"goal {request_id[:8]}: " + ("no result" if response is None else
                       f"status {response.status}: {response.result.result.error_message}"))
        # rclpy's action client drops a goal's feedback once its result is in, and the last feedback may come after
        # it: the result is the whole answer, the feedback heard must be its beginning
        streamed = {r.chunk_index: tuple(r.token_ids) for _, r in watch.chunks[request_id]}
        heard = tuple(t for i in sorted(streamed) for t in streamed[i])
        wrong += response is not None and tuple(response.result.result.token_ids)[:len(heard)] != heard
    for request_id in ids:
        finals = watch.finals(request_id)
        by_index: dict[int, set[tuple[int, ...]]] = collections.defaultdict(set)
        sent = collections.Counter()
        for _, r in watch.chunks[request_id]:
            by_index[r.chunk_index].add(tuple(r.token_ids))
            sent[r.chunk_index] += 1
        if request_id not in goals and (not finals or any(f.error_code for f in finals)):  # a goal: its result
            lost += 1
            why.append(f"request {request_id[:8]}: " + ("no final" if not finals else
                       "; ".join(f.error_message for f in finals if f.error_code)))
        duplicated += len(finals) > 1
        repeated += sum(n - 1 for i, n in sent.items() if len(by_index[i]) == 1)
        wrong += sum(len(tokens) > 1 for tokens in by_index.values()) + (sorted(sent) != list(range(len(sent))))
    return lost, duplicated, repeated, wrong, why


def run_role(role: str, kills: int, log) -> dict:
    """One fleet, ``kills`` rounds of killing the role's process; the figures."""
    fleet = Fleet(log, standby_copies=role != "baseline")
    watch = Watch(fleet.namespace)
    times: list[float] = []
    lost = duplicated = repeated = wrong = asked = 0
    try:
        for host_id, scale in (("h0", 4.0), ("h1", 2.0), ("h2", 1.0)):
            fleet.agent(host_id, scale)
        fleet.coordinator(standby=False)
        fleet.gateway(standby=False)
        if not watch.spin_until(lambda: watch.requests.get_subscription_count() > 0 and watch.primaries_ready()
                                and watch.actions.server_is_ready(), 180):
            raise TimeoutError("the fleet did not come up")
        standby = {"gateway": lambda: fleet.gateway(standby=True),
                   "coordinator": lambda: fleet.coordinator(standby=True)}.get(role)
        # started once the active one serves, as a standby is (doc/fleet.md, doc/chain.md)
        standby_name = standby() if standby is not None else ""

        def serving() -> bool:
            rid = watch.ask("Hi")
            return watch.spin_until(lambda: watch.finals(rid), 15) and not watch.finals(rid)[0].error_code

        if not watch.spin_until(serving, 180):
            raise TimeoutError("the fleet did not serve")
        spare = 0

        def settled() -> bool:
            """Every agent started has joined and the plans have settled: a join placed at the kill would move the
            modules to the new host (a load) and time that instead of the failover."""
            return set(fleet.agents) <= set(watch.hosted) and time.monotonic() - watch.plans[-1][0] > 1.0

        for round_index in range(kills):
            ready = {"host": lambda: watch.standbys_ready() and settled(),
                     "baseline": lambda: watch.primaries_ready() and settled()}.get(
                role, lambda name=standby_name: watch.standing_by(name))
            if not watch.spin_until(ready, 120):
                raise TimeoutError(f"round {round_index + 1}: the fleet is not ready for a kill")
            goals = [watch.goal(GOAL_PROMPT)]
            ids = [*(watch.ask(p) for p in PROMPTS), *goals]
            asked += len(ids)
            if not watch.spin_until(lambda ids=ids: sum(1 for i in ids for _, r in watch.chunks[i]
                                                        if r.token_ids) >= 3, 60):
                raise TimeoutError("no tokens before the kill")
            plan_count = len(watch.plans)
            if role in ("host", "baseline"):
                victim = watch.plan().modules[0].host_id
                fleet.agents.pop(victim).send_signal(signal.SIGKILL)
            elif role == "gateway":
                victim = "gateway"
                fleet.gateways.pop(0).send_signal(signal.SIGKILL)
            else:
                victim = "coordinator"
                fleet.coordinators.pop(0).send_signal(signal.SIGKILL)
            killed = time.monotonic()
            if role == "coordinator":
                took_over = watch.spin_until(lambda n=plan_count: len(watch.plans) > n, 30)
                failover = watch.plans[plan_count][0] - killed if took_over else None
            else:
                watch.spin_until(lambda ids=ids, killed=killed: watch.first_after(ids, killed), 120)
                after = watch.first_after(ids, killed)
                failover = None if after is None else after - killed
            if standby is None:  # the next round's process starts while this round's requests finish
                fleet.agent(f"spare{spare}", 0.5)
                spare += 1
            else:
                standby_name = standby()
            watch.spin_until(lambda ids=ids, goals=goals: all(watch.finals(i) for i in ids if i not in goals)
                             and all(g in watch.results for g in goals), 120)
            round_lost, round_duplicated, round_repeated, round_wrong, why = outcome(watch, ids, goals)
            lost, duplicated = lost + round_lost, duplicated + round_duplicated
            repeated, wrong = repeated + round_repeated, wrong + round_wrong
            if failover is not None:
                times.append(failover)
            new_plans = [t - killed for t, _ in watch.plans[plan_count:]]
            print(f"{role} kill {round_index + 1}: {victim} -> "
                  f"{'no failover' if failover is None else f'{failover:.3f} s'} (plans after "
                  f"{', '.join(f'{t:.3f}' for t in new_plans) or '-'} s), {round_lost} lost, "
                  f"{round_duplicated} duplicated, {round_repeated} chunks repeated, {round_wrong} wrong"
                  + "".join(f"\n    lost: {line}" for line in why), flush=True)
    except Exception:
        log.seek(0)
        print(log.read()[-6000:], file=sys.stderr)
        raise
    finally:
        watch.close()
        fleet.stop()
        clean_zombies()
    missing = kills - len(times)
    return {"kills": kills, "requests": asked, "failovers_timed": len(times),
            "failover_median_s": statistics.median(times) if times else float("nan"),
            "failover_p99_s": percentile(times, 0.99), "failover_worst_s": max(times, default=float("nan")),
            "no_failover": missing, "requests_lost": lost, "duplicated": duplicated, "chunks_repeated": repeated,
            "wrong": wrong, "failover_s": times}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="kills in all, shared evenly among the roles other "
                        "than the baseline (default 30: 10 each)")
    parser.add_argument("--baseline-kills", type=int, default=5, help="kills of the baseline (default 5)")
    parser.add_argument("--roles", default=",".join(ROLES), help=f"comma-separated, of {', '.join(ROLES)}")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--log", type=pathlib.Path, help="write the fleets' output to this file (default: shown "
                        "only if a run fails)")
    args = parser.parse_args()
    roles = [r for r in args.roles.split(",") if r]
    if unknown := set(roles) - set(ROLES):
        parser.error(f"unknown roles {sorted(unknown)}")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log = args.log.open("w+") if args.log else tempfile.TemporaryFile("w+")  # noqa: SIM115 -- shown if a run fails
    rclpy.init()
    figures: dict = {}
    timed_roles = [r for r in roles if r != "baseline"]
    each, extra = divmod(args.kills, max(len(timed_roles), 1))
    share = {role: each + (i < extra) for i, role in enumerate(timed_roles)}
    try:
        for role in roles:
            figures[role] = run_role(role, args.baseline_kills if role == "baseline" else share[role], log)
    finally:
        rclpy.shutdown()
    base = figures.get("baseline", {}).get("failover_median_s")
    print(f"\n{'role':<12} | {'kills':>5} | {'median s':>8} | {'p99 s':>6} | {'worst s':>7} | {'x baseline':>10} | "
          f"{'lost':>4} | {'dup':>3} | {'repeated':>8} | {'wrong':>5} | {'untimed':>7}")
    for role, f in figures.items():
        ratio = f["failover_median_s"] / base if base else float("nan")
        print(f"{role:<12} | {f['kills']:>5} | {f['failover_median_s']:8.3f} | {f['failover_p99_s']:6.3f} | "
              f"{f['failover_worst_s']:7.3f} | {ratio:10.2f} | {f['requests_lost']:>4} | {f['duplicated']:>3} | "
              f"{f['chunks_repeated']:>8} | {f['wrong']:>5} | {f['no_failover']:>7}")
    timed = [figures[r] for r in ("host", "gateway", "coordinator") if r in figures]
    if timed:
        figures["kills"] = sum(f["kills"] for f in timed)
        pooled = [t for f in timed for t in f["failover_s"]]
        figures["failover_median_s"] = statistics.median(pooled) if pooled else float("nan")
        figures["failover_worst_s"] = max(f["failover_worst_s"] for f in timed)
        figures["requests_lost"] = sum(f["requests_lost"] for f in timed)
        figures["duplicated"] = sum(f["duplicated"] for f in timed)
        figures["wrong"] = sum(f["wrong"] for f in timed)
        ratio = figures["failover_median_s"] / base if base else float("nan")
        print(f"{'all but base':<12} | {figures['kills']:>5} | {figures['failover_median_s']:8.3f} | "
              f"{percentile(pooled, 0.99):6.3f} | {figures['failover_worst_s']:7.3f} | {ratio:10.2f} | "
              f"{figures['requests_lost']:>4} | {figures['duplicated']:>3} | "
              f"{sum(f['chunks_repeated'] for f in timed):>8} | {figures['wrong']:>5} | "
              f"{sum(f['no_failover'] for f in timed):>7}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
