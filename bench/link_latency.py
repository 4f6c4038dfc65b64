"""Round-trip latency of Tensor traffic between two processes, with Fast DDS defaults vs edge_lam's profile.

Each profile gets a fresh tensor_echo process and a fresh pinger process (the profile is read when a process
creates its DDS participant), in a ROS domain of this run's own, discovery kept on this host. The pinger sends one
TensorList at a time and waits for its echo. The "2KB, 40 ms idle" row waits 40 ms before each send, as the
processes of a model chain do between the tokens they pass on (a shard computes a third of each ~40 ms token and
waits the rest): a round trip whose code paths have left the CPU caches meanwhile.

    python bench/link_latency.py [--iterations 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

IDLE_ROW, IDLE_S = "2KB, 40 ms idle", 0.040
REPO = pathlib.Path(__file__).resolve().parent.parent
SIZES = {"2KB": 2 << 10, "64KB": 64 << 10, "512KB": 512 << 10, "2MB": 2 << 20, IDLE_ROW: 2 << 10}
PROFILES = {"default": None, "edge_lam": str(REPO / "config" / "fastdds.xml")}
TIMEOUT_S = 10.0


def ping(iterations: int) -> dict[str, list[float]]:
    """In the pinger process: round-trip times in milliseconds, per payload size."""
    import numpy as np
    import rclpy
    from edge_lam_msgs.msg import TensorList

    from edge_lam.ros.qos import TENSORS
    from edge_lam.ros.spin import spin_until
    from edge_lam.wire.tensors import to_msg

    with rclpy.init():
        node = rclpy.create_node("link_latency_pinger")
        echoed: list[TensorList] = []
        subscription = node.create_subscription(TensorList, "pong", echoed.append, TENSORS)
        publisher = node.create_publisher(TensorList, "ping", TENSORS)

        def wait_for(done) -> None:
            if not spin_until(node, done, TIMEOUT_S, period_s=0.01):
                raise TimeoutError("tensor_echo did not answer")

        wait_for(lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0)
        results = {}
        for label, size in SIZES.items():
            msg = TensorList(tensors=[to_msg(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8))])
            times = []
            for i in range(iterations + 10):  # the first 10 warm the path up and are not counted
                msg.header.frame_id = str(i)
                echoed.clear()
                if label == IDLE_ROW:
                    time.sleep(IDLE_S)
                start = time.perf_counter()
                publisher.publish(msg)
                wait_for(lambda: echoed)
                if i >= 10:
                    times.append((time.perf_counter() - start) * 1e3)
            results[label] = times
        return results


def measure(profile: str | None, iterations: int, domain: int) -> dict[str, list[float]]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
    from ament_index_python.packages import get_package_prefix

    echo_exe = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam" / "tensor_echo"
    echo = subprocess.Popen([echo_exe], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pinger = subprocess.run([sys.executable, __file__, "--pinger", "--iterations", str(iterations)],
                                env=env, capture_output=True, text=True, timeout=600)
        if pinger.returncode != 0:
            raise RuntimeError(f"pinger failed:\n{pinger.stderr}")
        return json.loads(pinger.stdout.splitlines()[-1])
    finally:
        echo.terminate()
        echo.wait(timeout=10)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="round trips per payload size (default 200)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--pinger", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pinger:
        print(json.dumps(ping(args.iterations)))
        return 0

    domain = 100 + os.getpid() % 100
    runs = {name: measure(path, args.iterations, domain) for name, path in PROFILES.items()}
    figures: dict[str, dict] = {}
    print(f"Round trip of one TensorList through tensor_echo, {args.iterations} per size, milliseconds")
    print(f"{'payload':>16} | {'default p50':>11} {'p99':>7} | {'edge_lam p50':>12} {'p99':>7} | {'p50 ratio':>9}")
    for label in SIZES:
        row = {name: {"p50_ms": statistics.median(runs[name][label]), "p99_ms": p99(runs[name][label])}
               for name in PROFILES}
        row["p50_ratio_default_over_edge_lam"] = row["default"]["p50_ms"] / row["edge_lam"]["p50_ms"]
        figures[label] = row
        print(f"{label:>16} | {row['default']['p50_ms']:11.2f} {row['default']['p99_ms']:7.2f} | "
              f"{row['edge_lam']['p50_ms']:12.2f} {row['edge_lam']['p99_ms']:7.2f} | "
              f"{row['p50_ratio_default_over_edge_lam']:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"iterations": args.iterations, "round_trip": figures,
                                         "rtt_2mb_p50_ratio": figures["2MB"]["p50_ratio_default_over_edge_lam"],
                                         "rtt_2kb_idle_over_busy_p50": figures[IDLE_ROW]["edge_lam"]["p50_ms"]
                                         / figures["2KB"]["edge_lam"]["p50_ms"]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
