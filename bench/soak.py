"""Soak: the demo's graph with several robots streaming their bags in a loop, watched for memory that grows.

One fleet (a host agent per host, the coordinator, the gateway) and, per robot, its encoders, its reporter and its
looping bag replays, all as the installed executables, like ``edge-lam demo`` starts them. Every ``--sample-s`` the
bench records each process's resident memory, the gateway's queue from its /diagnostics bounds (where it publishes
them), the Fast DDS segments in /dev/shm, and the reports each robot got. After ``--minutes`` (60 by default) it
stops everything and prints, per process, the memory after the warm-up and at the end, and their growth; the
reports' latency (median and p99) in the first and the last quarter of the run. Key ``rss_growth_max``: the largest
growth after warm-up over all processes (goal < 5%). A plot over time (PNG).

    python bench/soak.py [--minutes 60] [--robots 3] [--warmup-minutes 5] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import psutil
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from edge_lam_msgs.msg import Report
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from edge_lam.demo.graph import (
    DemoConfig,
    HostSpec,
    bag_sensors,
    encoder_processes,
    fleet_processes,
    replay_processes,
)
from edge_lam.demo.run import ProcessGroup, default_bags
from edge_lam.ros.fastdds_shm import clean_zombies
from edge_lam.ros.qos import CONTROL
from edge_lam.ros.spin import spin_until

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
SHARE = pathlib.Path(get_package_share_directory("edge_lam"))
HOSTS = ("robot:robot:0.5:320", "edge:edge:1.0:480")


def robot_configs(robots: int, period_s: float, max_new_tokens: int) -> list[DemoConfig]:
    bags = default_bags()
    sensors = tuple(s for bag in bags for s in bag_sensors(bag))
    base = DemoConfig(robot_id="soak_r0", hosts=tuple(HostSpec.parse(h) for h in HOSTS),
                      model="smollm2-135m-instruct", sensors=sensors, period_s=period_s,
                      max_new_tokens=max_new_tokens, start_offset_s=0.0, params_file=SHARE / "config" / "demo.yaml")
    return [replace(base, robot_id=f"soak_r{i}") for i in range(robots)]


def start_graph(configs: list[DemoConfig], processes: ProcessGroup) -> None:
    """The fleet once, then each robot's reporter, encoders and replays under its own names."""
    for spec in fleet_processes(configs[0], LIB):
        if spec.name != "reporter":
            processes.start(spec)
    for config in configs:
        robot_specs = [s for s in fleet_processes(config, LIB) if s.name == "reporter"]
        robot_specs += encoder_processes(config, LIB, {m: "tokens" for m in config.modalities})
        robot_specs += replay_processes(config, LIB)
        for spec in robot_specs:
            processes.start(replace(spec, name=f"{spec.name}[{config.robot_id}]"))


def shm_bytes() -> int:
    total = 0
    for path in pathlib.Path("/dev/shm").glob("*fastdds*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def gateway_queue(arrays: list[DiagnosticArray]) -> float:
    """The gateway's queued requests from the newest bounds status it published (0 when it publishes none)."""
    for array in reversed(arrays):
        for status in array.status:
            if "gateway" in status.name and "bounds" in status.name:
                for value in status.values:
                    if "queue" in value.key:
                        return float(value.value.split("/")[0])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--robots", type=int, default=3)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between each robot's reports")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--plot", type=pathlib.Path)
    parser.add_argument("--logs", type=pathlib.Path, help="the processes' logs (default: a temp folder)")
    args = parser.parse_args()

    configs = robot_configs(args.robots, args.period, args.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="edge_lam_soak_") as tmp:
        logs = args.logs or pathlib.Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        processes = ProcessGroup(logs)
        rclpy.init()
        node = rclpy.create_node("soak_watch")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        reports: dict[str, list[tuple[float, Report]]] = {c.robot_id: [] for c in configs}
        for robot in reports:
            node.create_subscription(Report, f"/{robot}/reports",
                                     lambda msg, r=robot: reports[r].append((time.monotonic(), msg)), CONTROL)
        diagnostics: list[DiagnosticArray] = []
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda msg: diagnostics.append(msg) if len(diagnostics) < 1000
                                 else diagnostics.__setitem__(slice(None), [msg]),
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        samples: list[dict] = []
        begun = time.monotonic()
        try:
            start_graph(configs, processes)
            print(f"soak: {len(processes.running)} processes, {args.robots} robots, {args.minutes:g} min; "
                  f"a sample every {args.sample_s:g} s; logs in {logs}", flush=True)
            end = begun + args.minutes * 60
            while time.monotonic() < end:
                spin_until(executor, lambda: False, min(args.sample_s, max(end - time.monotonic(), 0.1)))
                processes.check()
                sample = {"t_s": time.monotonic() - begun, "shm_bytes": shm_bytes(),
                          "queue": gateway_queue(diagnostics),
                          "reports": {r: len(v) for r, v in reports.items()}, "rss_mb": {}}
                for name, process in processes.running.items():
                    with contextlib.suppress(psutil.Error):
                        sample["rss_mb"][name] = psutil.Process(process.pid).memory_info().rss / 1e6
                samples.append(sample)
                if len(samples) % max(int(60 / args.sample_s), 1) == 0:
                    print(f"[{sample['t_s'] / 60:5.1f} min] reports {sum(sample['reports'].values())}, "
                          f"RSS {sum(sample['rss_mb'].values()):.0f} MB, /dev/shm {sample['shm_bytes'] / 1e6:.0f} MB",
                          flush=True)
        finally:
            processes.stop()
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
            cleaned = clean_zombies()  # what a process that did not end gracefully left in /dev/shm
            if cleaned.removed:
                print(f"removed {len(cleaned.removed)} Fast DDS files from /dev/shm that stopped processes left "
                      f"({cleaned.freed_bytes / 2**20:.0f} MiB)")
        figures = summarise(samples, reports, args, begun)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.plot:
        plot(samples, args.warmup_minutes, args.plot)
    return 0


def summarise(samples: list[dict], reports: dict[str, list[tuple[float, Report]]], args, begun: float) -> dict:
    warm = [s for s in samples if s["t_s"] >= args.warmup_minutes * 60]
    if len(warm) < 2:
        raise SystemExit("the run ended before the warm-up did: run longer than --warmup-minutes")
    first, last = warm[0], warm[-1]
    growth = {name: (last["rss_mb"][name] - rss) / rss for name, rss in first["rss_mb"].items()
              if name in last["rss_mb"] and rss > 0}
    quarter = (last["t_s"] - first["t_s"]) / 4
    latencies = {"first_quarter": [], "last_quarter": []}
    answered = failed = 0
    for got in reports.values():
        for at, report in got:
            t = at - begun
            ok = report.error_code == 0
            answered += ok
            failed += not ok
            if ok and first["t_s"] <= t < first["t_s"] + quarter:
                latencies["first_quarter"].append(report.latency_s)
            elif ok and t >= last["t_s"] - quarter:
                latencies["last_quarter"].append(report.latency_s)
    return {
        "minutes": args.minutes, "robots": args.robots, "warmup_minutes": args.warmup_minutes,
        "rss_growth_max": max(growth.values(), default=0.0),
        "rss_growth": growth,
        "rss_after_warmup_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"],
        "reports_answered": answered, "reports_failed": failed,
        "latency_s": {k: {"median": statistics.median(v), "p99": _p99(v)} for k, v in latencies.items() if v},
        "shm_bytes_max": max(s["shm_bytes"] for s in samples), "queue_max": max(s["queue"] for s in samples),
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def print_table(figures: dict) -> None:
    print(f"\n{'process':56s} {'RSS warm MB':>11s} {'RSS end MB':>10s} {'growth':>7s}")
    for name, growth in sorted(figures["rss_growth"].items(), key=lambda kv: -kv[1]):
        print(f"{name:56s} {figures['rss_after_warmup_mb'][name]:11.0f} {figures['rss_end_mb'][name]:10.0f} "
              f"{growth:7.1%}")
    print(f"\nreports answered {figures['reports_answered']}, failed {figures['reports_failed']}")
    lat = figures["latency_s"]
    if "first_quarter" in lat and "last_quarter" in lat:
        print(f"report latency first quarter: median {lat['first_quarter']['median']:.2f} s, p99 "
              f"{lat['first_quarter']['p99']:.2f} s; last quarter: median {lat['last_quarter']['median']:.2f} s, "
              f"p99 {lat['last_quarter']['p99']:.2f} s (ratio of medians "
              f"{lat['last_quarter']['median'] / lat['first_quarter']['median']:.2f})")
    print(f"/dev/shm Fast DDS at most {figures['shm_bytes_max'] / 1e6:.0f} MB; gateway queue at most "
          f"{figures['queue_max']:.0f}")
    print(f"rss_growth_max {figures['rss_growth_max']:.1%} (goal < 5%)")


def plot(samples: list[dict], warmup_minutes: float, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    fig, (rss, answered, other) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for name in samples[-1]["rss_mb"]:
        rss.plot(minutes, [s["rss_mb"].get(name, float("nan")) for s in samples], label=name)
    rss.axvline(warmup_minutes, color="grey", linestyle="--", label="end of warm-up")
    rss.set_ylabel("resident memory, MB")
    rss.legend(fontsize=6, ncol=3)
    answered.plot(minutes, [sum(s["reports"].values()) for s in samples])
    answered.set_ylabel("reports answered (all robots)")
    other.plot(minutes, [s["shm_bytes"] / 1e6 for s in samples], label="/dev/shm Fast DDS, MB")
    other.plot(minutes, [s["queue"] for s in samples], label="gateway queue, requests")
    other.set_xlabel("minutes")
    other.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
