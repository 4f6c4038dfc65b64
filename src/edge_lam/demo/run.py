"""``edge-lam demo``: the whole graph on one machine, from bags to reports, then a summary and plots.

It starts a host agent per emulated host, the coordinator, the gateway, the encoders the bags need and the reporter,
each as its own process (the installed executables, as ``ros2 run`` starts them; their logs go to
``<output>/logs``), waits until the coordinator has placed the model and the chain answers, replays the bags under
the robot's namespace for ``duration`` seconds, waits for the last report, stops everything and writes
``summary.json``, ``latency_per_stage.png`` and ``placement.png``. It exits 0 when every tick got its report.

With ``--adapter`` the fleet's fine-tuned LoRA adapter is served: made first by the collaborative fine-tuning (an
edge trainer and two robot trainers, their own processes) unless a file is named, handed by every host agent to the
shards it loads, asked for by the reporter, and compared with the base model on questions held out of the
fine-tuning before the bags play.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_lam.demo.graph import DemoConfig, ProcessSpec
from edge_lam.demo.network import DemoNetwork, demo_network
from edge_lam.demo.summary import DemoRecords
from edge_lam.processes import stop_processes
from edge_lam.ros.fastdds_shm import SHM_DIR, clean_zombies

if TYPE_CHECKING:  # imported where used: `edge-lam` starts without torch or rclpy
    from edge_lam.demo.adapter import AdapterAnswer
    from edge_lam.demo.monitor_node import DemoMonitor

__all__ = ["DemoError", "ProcessGroup", "run_demo"]

STARTUP_TIMEOUT_S = 300.0  # import torch, measure, load the model in two agents, place, probe: ~1 min on 2 cores
TRAINING_TIMEOUT_S = 1800.0  # 3 rounds of 4 steps on two robots' shares: minutes on 2 cores
PROGRESS_PERIOD_S = 5.0


class DemoError(RuntimeError):
    """The demo could not run to its end: what failed and where to look."""


class ProcessGroup:
    """The demo's processes, each logging to its own file; stopped together (SIGINT, then SIGTERM, then SIGKILL).
    ``argv_of`` turns a process's spec into its command line (inside its host's namespace when hosts are emulated);
    ``env`` is added to this process's environment for every one of them."""

    def __init__(self, log_dir: pathlib.Path, argv_of: Callable[[ProcessSpec], list[str]] = lambda s: list(s.argv),
                 env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}
        self._argv_of = argv_of
        self._env = {**os.environ, **(env or {})}

    def start(self, spec: ProcessSpec) -> None:
        with self.log_of(spec.name).open("w") as out:
            self.running[spec.name] = subprocess.Popen(self._argv_of(spec), stdout=out, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, env=self._env)

    def log_of(self, name: str) -> pathlib.Path:
        return self.log_dir / (name.replace("/", "_").replace("[", "_").rstrip("]") + ".log")

    def check(self) -> None:
        """Raise DemoError naming the first process that ended by itself, with the end of its log."""
        for name, process in self.running.items():
            if process.poll() is not None:
                tail = "\n".join(self.log_of(name).read_text(errors="replace").splitlines()[-15:])
                raise DemoError(f"{name} exited with {process.returncode}; the end of its log "
                                f"({self.log_of(name)}):\n{tail}")

    def stop(self, names: list[str] | None = None, signals: tuple[int, ...] | None = None) -> None:
        chosen = [n for n in self.running if names is None or n in names]
        stop_processes((self.running.pop(n) for n in chosen), **({"signals": signals} if signals else {}))


def watch_until(monitor, done: Callable[[], bool], timeout_s: float, processes: ProcessGroup,
                every: Callable[[], None] | None = None) -> bool:
    """Spin the monitor until ``done()``; check the processes (and call ``every``) about once a second."""
    from edge_lam.ros.spin import spin_until

    last = 0.0

    def watched_done() -> bool:
        nonlocal last
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            processes.check()
            if every is not None:
                every()
        return done()

    return spin_until(monitor, watched_done, timeout_s, period_s=0.1)


def run_demo(args: argparse.Namespace) -> int:
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    from edge_lam.demo.graph import HostSpec, bag_sensors
    from edge_lam.demo.plots import plot_latency, plot_placement
    from edge_lam.demo.summary import summarise, write_summary
    from edge_lam.fleet.transport import parse_transports
    from edge_lam.trust.keys import make_keys

    output = pathlib.Path(args.output)
    (output / "logs").mkdir(parents=True, exist_ok=True)
    lib = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
    share = pathlib.Path(get_package_share_directory("edge_lam"))
    params = pathlib.Path(args.params_file or share / "config" / "demo.yaml")
    bags = [pathlib.Path(b) for b in (args.bag or default_bags())]
    for bag in bags:
        if not bag.exists():
            raise DemoError(f"bag {bag} does not exist (run `make setup` for the bundled ones)")
    hosts = tuple(HostSpec.parse(h) for h in args.hosts)
    # The control plane is signed as on a real fleet: a key per host, made afresh for each run (in one folder,
    # which is every host's trust store here; on real hosts only the .pub files are copied).
    keys_dir = (output / "keys").resolve()
    make_keys(keys_dir, [h.host_id for h in hosts], force=True)
    sensors = tuple(s for bag in bags for s in bag_sensors(bag))
    config = DemoConfig(
        robot_id=args.robot_id, hosts=hosts, model=args.model, sensors=sensors, period_s=args.period,
        max_new_tokens=args.max_new_tokens, start_offset_s=args.start_offset, params_file=params, keys_dir=keys_dir,
        transports=parse_transports(args.transport, sorted({s.modality for s in sensors})),
    )
    if args.adapter is not None:
        adapter = pathlib.Path(args.adapter).resolve() if args.adapter else train_fleet_adapter(config, lib, output)
        from edge_lam.model.adapters import load_adapter

        load_adapter(adapter)  # a file that is no adapter stops the demo here, not in every shard
        config = dataclasses.replace(config, adapter=adapter)
    print(f"edge_lam demo: {config.model} on {', '.join(h.host_id for h in config.hosts)}; bags "
          f"{', '.join(b.name for b in bags)} ({', '.join(s.topic for s in config.sensors)}) for {args.duration:g} s; "
          f"a report every {config.period_s:g} s; output in {output}/; control plane signed (keys in {keys_dir})")
    with demo_network(args.network, args.discovery, config, share) as network:
        if network.hosts is not None:
            where = ", ".join(f"{h.host_id} {network.hosts.address(h.host_id)} (namespace "
                              f"{network.hosts.namespace(h.host_id)})" for h in config.hosts)
            print(f"network: emulated hosts {where}; UDP only; discovery {args.discovery}; the monitor joins "
                  f"{network.monitor_host}")
        os.environ.update(network.env)  # this process's own participant (the monitor), before it is created
        records, bags_started_s = _run_graph(args, config, lib, output, ProcessGroup(
            output / "logs", network.argv, network.env), network)
    summary = summarise(records, model=config.model, robot_id=config.robot_id, duration_s=args.duration,
                        period_s=config.period_s, bags_started_s=bags_started_s)
    if config.adapter is not None:
        summary["adapter"] = {"file": str(config.adapter), "answers": [a.as_dict() for a in records.adapter_answers]}
    write_summary(summary, output / "summary.json")
    plot_latency(records.reports, output / "latency_per_stage.png")
    plot_placement(records.plans, output / "placement.png")
    print_summary(summary, output)
    ok = (summary["ticks"] > 0 and summary["reports_ok"] == summary["ticks"] and not summary["unanswered"]
          and summary["consistency"]["stages_add_up"])
    return 0 if ok else 1


def _run_graph(args: argparse.Namespace, config: DemoConfig, lib: pathlib.Path, output: pathlib.Path,
               processes: ProcessGroup, network: DemoNetwork) -> tuple[DemoRecords, float | None]:
    """Start the graph, play the bags, wait for the last report, stop everything: the monitor's records."""
    import rclpy

    from edge_lam.demo.adapter import format_comparison
    from edge_lam.demo.graph import (
        demo_processes,
        encoder_processes,
        fleet_processes,
        replay_processes,
        resolve_transports,
    )
    from edge_lam.demo.monitor_node import DemoMonitor

    with network.monitor():
        rclpy.init()
        monitor = DemoMonitor(config)
    try:
        for spec in network.extra:
            processes.start(spec)
        # With a transport on auto the encoders wait for the adverts the choice is made from (the chain serving).
        for spec in fleet_processes(config, lib) if config.needs_adverts else demo_processes(config, lib):
            processes.start(spec)
        begun = time.monotonic()
        print(f"started {len(processes.running)} processes; waiting for the placement and the chain to answer")
        if not watch_until(monitor, monitor.chain_serves, STARTUP_TIMEOUT_S, processes):
            raise DemoError(f"the chain did not answer within {STARTUP_TIMEOUT_S:g} s; see {output}/logs")
        print(f"the chain answers ({time.monotonic() - begun:.1f} s after start)")
        if config.adapter is not None:
            monitor.records.adapter_answers = compare_adapter(monitor, processes)
            print(format_comparison(monitor.records.adapter_answers))
        print("playing the bags")
        decisions = resolve_transports(config, monitor.adverts)
        for modality, decision in decisions.items():
            print(f"transport of {modality}: {decision.choice} ({decision.reason})")
        if config.needs_adverts:
            for spec in encoder_processes(config, lib, {m: d.choice for m, d in decisions.items()}):
                processes.start(spec)

        replays = replay_processes(config, lib)
        for spec in replays:
            processes.start(spec)
        monitor.bags_started_s = end_s = monitor.now_s()
        end_s += args.duration
        watch_until(monitor, lambda: monitor.now_s() >= end_s, args.duration + 1.0, processes, Progress(monitor))
        processes.stop([spec.name for spec in replays])
        print(f"[{monitor.now_s():7.1f} s] the bags ended; waiting for the last report")
        # A tick may still come for tokens that arrived after the last request: give it one period, then its answer.
        quiet_since = time.monotonic()
        watch_until(monitor, lambda: not monitor.records.unanswered() and
                    time.monotonic() - quiet_since > config.period_s + 1.0, 120.0, processes)
    finally:
        stopping, count = time.monotonic(), len(processes.running)
        last = {spec.name for spec in network.extra}  # the discovery server: nodes leave the graph through it
        processes.stop([name for name in processes.running if name not in last])
        processes.stop(signals=(signal.SIGTERM, signal.SIGKILL))  # `fastdds discovery` ignores SIGINT
        print(f"stopped {count} processes in {time.monotonic() - stopping:.1f} s")
        monitor.destroy_node()
        rclpy.try_shutdown()
        # A process that had to be killed leaves its Fast DDS segments in /dev/shm (35 MB each): remove what no
        # live process holds, as `fastdds shm clean` does.
        cleaned = clean_zombies()
        if cleaned.removed:
            print(f"removed {len(cleaned.removed)} Fast DDS files from {SHM_DIR} that stopped processes left "
                  f"({cleaned.freed_bytes / 2**20:.0f} MiB)")
    return monitor.records, monitor.bags_started_s


def train_fleet_adapter(config: DemoConfig, lib: pathlib.Path, output: pathlib.Path) -> pathlib.Path:
    """Run the collaborative fine-tuning to its end (doc/training.md); the adapter file the edge trainer wrote."""
    from edge_lam.demo.graph import training_processes

    adapter = (output / "fleet_adapter.safetensors").resolve()
    adapter.unlink(missing_ok=True)
    (output / "training").mkdir(exist_ok=True)
    processes = ProcessGroup(output / "logs")
    specs = training_processes(config, lib, adapter, output / "training")
    print(f"fine-tuning the fleet's adapter on the domain set: {', '.join(s.name for s in specs)} (split LoRA, "
          f"FedAvg of the robots' adapters; ledgers in {output}/training)")
    begun = time.monotonic()
    try:
        for spec in specs:
            processes.start(spec)
        while not adapter.is_file():  # written (whole, by a rename) when the edge closes its last round
            ended = [name for name, p in processes.running.items()
                     if p.poll() is not None and (p.returncode != 0 or name == "edge_trainer")]
            if ended or time.monotonic() - begun > TRAINING_TIMEOUT_S:
                name = ended[0] if ended else "edge_trainer"
                tail = "\n".join(processes.log_of(name).read_text(errors="replace").splitlines()[-15:])
                raise DemoError(f"the fine-tuning did not write {adapter} ({name} "
                                f"{'ended' if ended else f'still ran after {TRAINING_TIMEOUT_S:g} s'}); the end "
                                f"of its log ({processes.log_of(name)}):\n{tail}")
            time.sleep(1.0)
    finally:
        processes.stop()
    print(f"the fleet's adapter: {adapter} ({time.monotonic() - begun:.0f} s of fine-tuning; `--adapter {adapter}` "
          "serves it again without training)")
    return adapter


def compare_adapter(monitor: DemoMonitor, processes: ProcessGroup) -> list[AdapterAnswer]:
    """Ask questions held out of the fine-tuning with and without the fleet's adapter; the answers side by side."""
    from edge_lam.assets.cache import evo_bags_dir
    from edge_lam.demo.adapter import AdapterAnswer, comparison_questions, comparison_requests
    from edge_lam.training.domain_data import build_domain_set

    questions = comparison_questions(build_domain_set(evo_bags_dir() / "nav2_turtlebot.mcap"))
    pairs = comparison_requests(questions)
    for request in (r for pair in pairs for r in pair):
        monitor.ask(request)
    if not watch_until(monitor, lambda: all(monitor.answer(r) is not None for r in monitor.asked), 300.0, processes):
        raise DemoError("the questions with and without the adapter got no answer in 300 s")
    return [AdapterAnswer(q.question, q.answer, monitor.answer(base.request_id), monitor.answer(adapted.request_id))
            for q, (base, adapted) in zip(questions, pairs, strict=True)]


class Progress:
    """A line every few seconds: tokens per modality with their encode latency, reports so far, the plan."""

    def __init__(self, monitor) -> None:
        self.monitor = monitor
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last < PROGRESS_PERIOD_S:
            return
        self.last = time.monotonic()
        records = self.monitor.records
        tokens = ", ".join(f"{m} {len(v)}" for m, v in sorted(records.encode_s.items()))
        plan = f"plan v{records.plans[-1].version}" if records.plans else "no plan"
        print(f"[{self.monitor.now_s():7.1f} s] tokens: {tokens or 'none yet'}; reports {len(records.reports)}"
              f"/{len(records.requests)} asked; {plan}")


def print_summary(summary: dict, output: pathlib.Path) -> None:
    latency = summary["latency_s"] or {"median": float("nan"), "p99": float("nan")}
    print(f"\n{summary['reports_ok']} of {summary['ticks']} reports; latency median {latency['median']:.2f} s, "
          f"p99 {latency['p99']:.2f} s")
    print(f"{'stage':<36} {'median ms':>10} {'p99 ms':>10}")
    for label, figures in summary["stages_s"].items():
        print(f"{label:<36} {figures['median'] * 1e3:>10.1f} {figures['p99'] * 1e3:>10.1f}")
    for modality, figures in summary["encoders"].items():
        print(f"encoder {modality:<28} {figures['encode_ms']['median']:>10.1f} {figures['encode_ms']['p99']:>10.1f}"
              f"   ({figures['messages']} messages)")
    check = summary["consistency"]
    print(f"stages add up to the total: {'yes' if check['stages_add_up'] else 'NO'} (largest gap "
          f"{check['max_gap_s'] * 1e3:.1f} ms; tolerance {check['tolerance']['relative']:.0%} + "
          f"{check['tolerance']['absolute_s'] * 1e3:.0f} ms)")
    print(f"wrote {output}/summary.json, latency_per_stage.png, placement.png; process logs in {output}/logs")


def default_bags() -> list[pathlib.Path]:
    """The bundled bags: the camera bag made at setup and the TurtleBot's Nav2 run (odometry) from evo."""
    from edge_lam.assets.cache import camera_bag_dir, evo_bags_dir

    return [camera_bag_dir() / "bag.mcap", evo_bags_dir() / "nav2_turtlebot.mcap"]
