"""SmolLM2 split between a robot and an edge host over an emulated network vs. the same graph on one host over shared
memory, in the same run: time to first token, per-token decode latency, request latency, bytes on the wire, answers.

The graph is that of test/test_network.py: embedding and blocks 0-15 on the robot, blocks 15-30, the head and the
gateway on the edge, so every token crosses the robot's link twice. The ``net`` graph runs in two emulated hosts
(edge_lam.hosts: network namespaces, a user-space forwarder shaping the robot's link), with the inter-host Fast DDS
profile (config/fastdds_interhost.xml: UDP only) and SUBNET discovery; the ``shm`` graph runs all three processes in
a third host of their own with the one-host profile (config/fastdds.xml: shared memory) and LOCALHOST discovery.
Each graph is asked by a driver process that enters its host's namespace before it creates a participant (a
process's participants must all start in one network namespace), one request at a time, timing the streamed chunks
as they arrive.

Link points: the robot's link gets LATENCY each way (a token's round trip robot <-> edge crosses it twice: 2 x
LATENCY per hop pair) and LOSS each way. By default the two axes (latency 0/10/50/100 ms at 0% loss; loss 1/5/10%
at 10 ms) and the 50 ms / 5% point; ``--grid`` runs all 16 points. The one-host graph and the 0 ms point are asked
in turn, ``--pairs`` times (3 prompts each time), so both see the machine's speed drift alike. Bytes are
counted on the robot's veth (rx + tx, as the kernel counts them: DDS headers, fragments, acknowledgements,
retransmissions and discovery included) over each point's requests. Answers are compared, token for token, with
the ``shm`` graph's answer to the same prompt (greedy decoding). A request with no final answer in
``REQUEST_TIMEOUT_S`` is lost.

    sudo -E python bench/network.py [--max-new-tokens 16] [--grid] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
PROMPTS = ["Describe what a warehouse robot does during one shift.",
           "Explain how a robot vacuum finds its way around a room.",
           "List the steps to charge a delivery robot's battery."]
FRONT = ["-p", "modules:=[embedding, 'blocks:0:15']", "-p", "output_topic:=chain/hidden_15", "-p", "host_id:=robot"]
BACK = ["-p", "modules:=['blocks:15:30', head]", "-p", "input_topic:=chain/hidden_15", "-p", "host_id:=edge"]
LATENCIES_MS, LOSSES = (0, 10, 50, 100), (0.0, 0.01, 0.05, 0.10)
REQUEST_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 240.0
DRIVE_TIMEOUT_S = 1800.0
PREFIX = f"elnet{os.getpid() % 100000}"  # this run's namespaces: two runs never take each other's apart


def points(grid: bool) -> list[tuple[int, float]]:
    if grid:
        return [(latency, loss) for latency in LATENCIES_MS for loss in LOSSES]
    axes = [(latency, 0.0) for latency in LATENCIES_MS] + [(10, loss) for loss in LOSSES[1:]]
    return [*axes, (50, 0.05)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[8] if len(values) > 1 else median(values)


class Driver:
    """A node of this process that asks one gateway and times the chunks of its answers."""

    def __init__(self, namespace: str, discovery_range: str) -> None:
        import rclpy
        import rclpy.executors
        from edge_lam_msgs.msg import InferenceRequest, InferenceResult

        from edge_lam.ros.qos import CONTROL

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range  # read when the context starts
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("network_bench", namespace=namespace, context=self.context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.chunks: list[tuple[float, InferenceResult]] = []
        self.node.create_subscription(InferenceResult, "results",
                                      lambda r: self.chunks.append((time.perf_counter(), r)), CONTROL)
        self.requests = self.node.create_publisher(InferenceRequest, "requests", CONTROL)
        self._request_type = InferenceRequest

    def spin_until(self, done, timeout_s: float) -> bool:
        from edge_lam.ros.spin import spin_until

        return spin_until(self.executor, done, timeout_s, period_s=0.5)

    def ask(self, prompt: str, max_new: int, timeout_s: float = REQUEST_TIMEOUT_S) -> dict | None:
        """Times and tokens of one answer, or None when no final came in time (lost)."""
        request = self._request_type(request_id=uuid.uuid4().hex, prompt=prompt)
        request.options.max_new_tokens = max_new
        self.chunks.clear()
        sent = time.perf_counter()
        self.requests.publish(request)
        mine = lambda: [(t, r) for t, r in self.chunks if r.request_id == request.request_id]  # noqa: E731
        if not self.spin_until(lambda: any(r.final for _, r in mine()), timeout_s):
            return None
        chunks = mine()
        arrivals = [t for t, r in chunks if r.token_ids]
        finals = [r for _, r in chunks if r.final]
        return {"error": finals[-1].error_message if finals[-1].error_code else "", "finals": len(finals),
                "tokens": [t for _, r in chunks for t in r.token_ids],
                "ttft_s": arrivals[0] - sent if arrivals else float("nan"),
                "decode_s": [b - a for a, b in itertools.pairwise(arrivals)],
                "request_s": chunks[-1][0] - sent}

    def wait_until_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.ask("Hi", 1, timeout_s=5)
            if answer is not None and not answer["error"]:
                return
            time.sleep(0.5)
        raise TimeoutError("the chain did not come up")

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def start_graph(commands: list[list[str]], env: dict[str, str], log) -> list[subprocess.Popen]:
    return [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **env}) for c in commands]


def graph_commands(lib: pathlib.Path, namespace: str) -> list[tuple[str, list[str]]]:
    """(host, argv) of the two shards and the gateway."""
    ns = ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"model:={MODEL}"]
    return [("robot", [str(lib / "shard"), *ns, "-r", "__node:=front", *FRONT]),
            ("edge", [str(lib / "shard"), *ns, "-r", "__node:=back", *BACK]),
            ("edge", [str(lib / "gateway"), *ns, "-p", "plan_topic:=''"])]


def in_host(namespace: str, function, *args):
    """``function(*args)`` in a fresh process that enters ``namespace`` before it creates a participant (a process's
    participants must all start in one network namespace: one made after another elsewhere is never discovered)."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply_async(_joined_call, (namespace, function, args)).get(DRIVE_TIMEOUT_S)
    finally:
        pool.terminate()
        pool.join()


def _joined_call(namespace: str, function, args):
    from edge_lam.hosts.joining import joined

    with joined(namespace):
        return function(*args)


def drive_shm(namespace: str, max_new: int, warm_up: bool) -> list[tuple[str, dict | None]]:
    """In the one-host graph's namespace: (warm up, then) each prompt once."""
    driver = Driver(namespace, "LOCALHOST")
    try:
        driver.wait_until_serving(STARTUP_TIMEOUT_S)
        for prompt in PROMPTS if warm_up else []:
            driver.ask(prompt, max_new)
        return [(prompt, driver.ask(prompt, max_new)) for prompt in PROMPTS]
    finally:
        driver.close()


def drive_net(prefix: str, namespace: str, max_new: int, link_points: list[tuple[int, float]],
              warm_up: bool) -> list[dict]:
    """In the edge host: (warm up, then) each link point's prompts, with the bytes on the robot's veth."""
    from edge_lam.hosts import EmulatedHosts, LinkShape

    hosts = EmulatedHosts.attach(prefix)
    driver = Driver(namespace, "SUBNET")
    try:
        driver.wait_until_serving(STARTUP_TIMEOUT_S)
        for prompt in PROMPTS if warm_up else []:
            driver.ask(prompt, max_new)
        points_run = []
        for latency_ms, loss in link_points:
            shape = LinkShape(latency_ms=latency_ms, loss=loss)
            hosts.set_link("robot", up=shape, down=shape)
            before = hosts.counters("robot")
            answers = [(prompt, driver.ask(prompt, max_new)) for prompt in PROMPTS]
            after = hosts.counters("robot")
            points_run.append({"latency_ms": latency_ms, "loss": loss, "answers": answers,
                               "wire_bytes": (after.rx_bytes - before.rx_bytes) + (after.tx_bytes - before.tx_bytes)})
            print(f"net {latency_ms} ms {loss:.0%}: done", file=sys.stderr, flush=True)
        return points_run
    finally:
        driver.close()


def run(max_new: int, grid: bool, pairs: int) -> dict:
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    from edge_lam.hosts import EmulatedHosts
    from edge_lam.processes import stop_processes

    lib = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
    config = pathlib.Path(get_package_share_directory("edge_lam")) / "config"
    # The drivers use the one-host profile (shared memory and UDP): shared memory to the one-host graph, UDP to
    # the net graph, whose processes offer nothing else.
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config / "fastdds.xml")
    shm_env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(config / "fastdds.xml"),
               "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    net_env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(config / "fastdds_interhost.xml"),
               "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the processes' logs, shown if the run fails
    processes: list[subprocess.Popen] = []
    try:
        with EmulatedHosts(["robot", "edge", "onehost"], prefix=PREFIX) as hosts:
            shm_ns, net_ns = f"shm_{uuid.uuid4().hex[:6]}", f"net_{uuid.uuid4().hex[:6]}"
            processes += start_graph([hosts.command("onehost", argv) for _, argv in graph_commands(lib, shm_ns)],
                                     shm_env, log)
            processes += start_graph([hosts.command(host, argv) for host, argv in graph_commands(lib, net_ns)],
                                     net_env, log)
            # The one-host graph and the 0 ms point in turn, `pairs` times, so both see the machine's speed drift
            # alike; then the other points.
            shm_answers, net_points = [], []
            for pair in range(pairs):
                shm_answers += in_host(hosts.namespace("onehost"), drive_shm, shm_ns, max_new, pair == 0)
                net_points += in_host(hosts.namespace("edge"), drive_net, PREFIX, net_ns, max_new, [(0, 0.0)],
                                      pair == 0)
            net_points += in_host(hosts.namespace("edge"), drive_net, PREFIX, net_ns, max_new,
                                  [p for p in points(grid) if p != (0, 0.0)], False)
    except Exception:
        log.seek(0)
        print(log.read()[-5000:], file=sys.stderr)
        raise
    finally:
        stop_processes(processes)
    failed = [p for p, a in shm_answers if a is None or a["error"]]
    if failed:
        raise RuntimeError(f"the one-host graph did not answer {failed}")
    reference = {prompt: answer["tokens"] for prompt, answer in shm_answers}
    shm_row = point_row("shm (one host)", None, None, shm_answers, reference, None)
    by_point: dict[tuple[int, float], dict] = {}
    for p in net_points:  # the 0 ms point's pairs into one row
        row = by_point.setdefault((p["latency_ms"], p["loss"]), {"answers": [], "wire_bytes": 0})
        row["answers"] += p["answers"]
        row["wire_bytes"] += p["wire_bytes"]
    rows = [point_row(f"net {latency_ms} ms {loss:.0%}", latency_ms, loss, p["answers"], reference, p["wire_bytes"])
            for (latency_ms, loss), p in by_point.items()]
    net0 = next(r for r in rows if r["latency_ms"] == 0 and r["loss"] == 0)
    headline = next(r for r in rows if r["latency_ms"] == 50 and r["loss"] == 0.05)
    return {
        "max_new_tokens": max_new, "prompts": len(PROMPTS), "pairs": pairs, "rows": [shm_row, *rows],
        "decode_ratio_net0_vs_shm": shm_row["decode_ms"]["median"] / net0["decode_ms"]["median"],
        "requests_lost": sum(r["lost"] for r in rows),
        "answers_correct_at_50ms_5pct": headline["correct"] / headline["requests"],
        "bytes_per_token_net0": net0["bytes_per_token"],
    }


def point_row(label: str, latency_ms: int | None, loss: float | None, answers: list[tuple[str, dict | None]],
              reference: dict[str, list[int]], wire_bytes: int | None) -> dict:
    done = [a for _, a in answers if a is not None]
    tokens = sum(len(a["tokens"]) for a in done)
    return {
        "label": label, "latency_ms": latency_ms, "loss": loss, "requests": len(answers),
        "lost": len(answers) - len(done),
        "correct": sum(1 for p, a in answers if a is not None and not a["error"] and a["finals"] == 1
                       and a["tokens"] == reference[p]),
        "ttft_ms": {"median": median([a["ttft_s"] * 1e3 for a in done])},
        "decode_ms": {"median": median([d * 1e3 for a in done for d in a["decode_s"]]),
                      "p90": p90([d * 1e3 for a in done for d in a["decode_s"]])},
        "request_s": {"median": median([a["request_s"] for a in done])},
        "wire_bytes": wire_bytes,
        "bytes_per_token": wire_bytes / tokens if wire_bytes is not None and tokens else None,
        "bytes_per_request": wire_bytes / len(answers) if wire_bytes is not None else None,
    }


HEADER = (f"{'graph / robot link (each way)':<30} {'TTFT ms':>8} {'decode ms':>10} {'p90':>7} {'request s':>10} "
          f"{'KB/token':>9} {'KB/request':>11} {'correct':>8} {'lost':>5}")


def format_row(row: dict) -> str:
    kb = lambda v: f"{v / 1e3:.1f}" if v is not None else "-"  # noqa: E731
    return (f"{row['label']:<30} {row['ttft_ms']['median']:>8.0f} {row['decode_ms']['median']:>10.1f} "
            f"{row['decode_ms']['p90']:>7.1f} {row['request_s']['median']:>10.2f} {kb(row['bytes_per_token']):>9} "
            f"{kb(row['bytes_per_request']):>11} {row['correct']:>5}/{row['requests']:<2} {row['lost']:>5}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per request (default 16)")
    parser.add_argument("--grid", action="store_true", help="every latency with every loss (16 points)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="times the one-host graph and the 0 ms point are asked in turn (default 3)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    args = parser.parse_args()
    from edge_lam.hosts import has_rights

    if not has_rights():
        print("bench/network.py: emulated hosts are network namespaces: run as root (sudo -E)", file=sys.stderr)
        return 2
    os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
    # SIGTERM (a timeout, a CI runner) unwinds like Ctrl-C: the processes stop and the hosts come down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures = run(args.max_new_tokens, args.grid, args.pairs)
    print(HEADER)
    for row in figures["rows"]:
        print(format_row(row))
    print(f"decode_ratio_net0_vs_shm {figures['decode_ratio_net0_vs_shm']:.3f} (shm decode time / net 0 ms decode "
          f"time: 1.0 = the network costs nothing); requests_lost {figures['requests_lost']}; "
          f"answers_correct_at_50ms_5pct {figures['answers_correct_at_50ms_5pct']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
