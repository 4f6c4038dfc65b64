"""Host agents in separate emulated hosts measure the real links between them, and the coordinator's plan follows.

Each host is a network namespace (edge_lam.hosts); every process there talks UDP only (config/fastdds_interhost.xml)
with SUBNET discovery, so probes cross the forwarder that shapes the robot's link. The test process cannot join the
fleet (its own participants discover on localhost only): test/fleet_watch.py, run in the edge host, prints the
adverts and plans as JSON lines. Which plan the links must give is computed here with the solver
(edge_lam.placement) from the compute the agents advertise, so the assertions are the cost model's, not guesses.
Needs root (network namespaces); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from conftest import REPO, REPORTED, TEST_DIR
from edge_lam.descriptors import Host, Link
from edge_lam.hosts import NEEDS_ROOT, EmulatedHosts, LinkShape, down_prefix, has_rights
from edge_lam.placement.solver import solve
from edge_lam.placement.types import Plan

pytestmark = pytest.mark.skipif(not has_rights(), reason=NEEDS_ROOT)

MODEL = "smollm2-135m-instruct"
PREFIX = f"el{os.environ['ROS_DOMAIN_ID']}l"  # this run's namespaces: el<domain>l-robot, el<domain>l-edge
ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
       "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_interhost.xml")}
PROBE_PERIOD_S = 1.0
SLOW = LinkShape(latency_ms=50.0)  # each way: 100 ms round trips
FAR = LinkShape(latency_ms=150.0)  # each way: two crossings cost more than decoding SmolLM2 at half the speed
NARROW = LinkShape(rate_bps=5e6)
SMALL_S = 0.02  # a perfect link's latency reads less than this
CONTEXT_TOKENS = 2048  # the coordinator's default


class Lines:
    """Every line a process prints, collected by a thread (so that no pipe fills up), JSON lines parsed."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text: list[str] = []
        self.records: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.text.append(line)
            if line.startswith("{"):
                self.records.append(json.loads(line))

    def adverts(self, host: str) -> list[dict]:
        return [r for r in self.records if r.get("advert") == host]

    def plans(self) -> list[dict]:
        return [r for r in self.records if "plan" in r]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, *outputs: Lines):
    """``condition()`` once it is true; fails naming ``what`` (and the tail of ``outputs``) after the time-out."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            tails = "\n---\n".join("".join(o.text[-15:]) for o in outputs)
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{tails}")
        time.sleep(0.1)
    return result


@pytest.fixture
def hosts() -> Iterator[EmulatedHosts]:
    """A robot and an edge host, taken apart (with every process left in them) whatever the test did."""
    down_prefix(PREFIX)  # what a killed earlier run of this domain left
    with EmulatedHosts(["robot", "edge"], prefix=PREFIX) as emulated:
        yield emulated


class Fleet:
    """Agents, coordinator and watcher in their hosts, on topics of this test's own."""

    def __init__(self, processes, hosts: EmulatedHosts) -> None:
        self.processes, self.hosts = processes, hosts
        namespace = f"/links_{uuid.uuid4().hex[:8]}"
        self.topics = [f"adverts_topic:={namespace}/adverts", f"plan_topic:={namespace}/plan"]
        self.outputs: list[Lines] = []
        self.watch = self._start("edge", [sys.executable, str(TEST_DIR / "fleet_watch.py"), f"{namespace}/adverts",
                                          f"{namespace}/plan"])

    def _start(self, host: str, argv: list[str]) -> Lines:
        lines = Lines(self.processes.start(*self.hosts.command(host, argv, ENV)))
        self.outputs.append(lines)
        return lines

    def _ros_args(self, *params: str) -> list[str]:
        return ["--ros-args", *(a for p in (*self.topics, *params) for a in ("-p", p))]

    def agent(self, host: str, compute_scale: float) -> Lines:
        return self._start(host, [sys.executable, "-m", "edge_lam.fleet.host_agent_node", *self._ros_args(
            f"host_id:={host}", f"role:={'robot' if host == 'robot' else 'edge'}", f"compute_scale:={compute_scale}",
            f"model:={MODEL}", f"link_probe_period_s:={PROBE_PERIOD_S}"), "-r", f"__node:=agent_{host}"])

    def coordinator(self) -> Lines:
        # use_load false: the emulated hosts share one machine's CPUs, so each one's load is the others' work
        return self._start("edge", [sys.executable, "-m", "edge_lam.fleet.coordinator_node", *self._ros_args(
            f"model:={MODEL}", "gateway_host:=edge", "use_load:=false", "settle_s:=2.0", "replan_period_s:=0.5",
            "host_timeout_s:=2.0")])

    def link(self, src: str, dst: str) -> list[float] | None:
        """[latency_s, bandwidth_bps] of the last advert of ``src`` that has a link to ``dst``."""
        with_link = [a for a in self.watch.adverts(src) if dst in a["links"]]
        return with_link[-1]["links"][dst] if with_link else None

    def plan_hosts(self) -> set[str] | None:
        plans = self.watch.plans()
        return {host for _, host in plans[-1]["modules"]} if plans else None


def solved(units, gflops: dict[str, tuple[float, float]], latency_s: float, bandwidth_bps: float = 1e9) -> Plan:
    """The solver's plan with the gateway on the edge and this link (both ways) between robot and edge; ``gflops``:
    each host's advertised GFLOP/s and memory bandwidth."""
    hosts = [Host(host_id, g, 64 * 2**30, bandwidth_gbps=b) for host_id, (g, b) in sorted(gflops.items())]
    links = [Link("edge", "robot", latency_s, bandwidth_bps), Link("robot", "edge", latency_s, bandwidth_bps)]
    return solve(units, hosts, links, source_host="edge", sink_host="edge", context_tokens=CONTEXT_TOKENS)


def expected_hosts(units, gflops: dict[str, tuple[float, float]], latency_s: float, bandwidth_bps: float
                   ) -> set[str]:
    return {segment.host_id for segment in solved(units, gflops, latency_s, bandwidth_bps).segments}


def gain(units, gflops: dict[str, tuple[float, float]], latency_s: float, to: str) -> float:
    """How much faster the model runs on host ``to`` alone than on the other host alone, over this link."""
    other = next(h for h in gflops if h != to)
    return solved(units, {other: gflops[other]}, latency_s).expected_latency_s / \
        solved(units, {to: gflops[to]}, latency_s).expected_latency_s - 1.0


def test_probes_measure_latency_and_rate_of_the_emulated_link(processes, hosts):
    fleet = Fleet(processes, hosts)
    outputs = (fleet.watch, fleet.agent("robot", 1.0), fleet.agent("edge", 1.0))

    def measured(check: Callable[[float, float], bool]) -> Callable[[], bool]:
        def both() -> bool:
            links = [fleet.link("edge", "robot"), fleet.link("robot", "edge")]
            return all(link is not None and check(*link) for link in links)
        return both

    seen = []

    def shown() -> str:
        lat, bw = fleet.link("edge", "robot")
        return f"{lat * 1e3:.1f} ms, {bw / 1e6:.1f} Mbit/s"

    # "Small": the forwarder and both executors add their share, more on a busy machine (up to 7 ms seen)
    wait_for(measured(lambda lat, bw: lat < SMALL_S), 60, "a perfect link measured under 20 ms", *outputs)
    seen.append(f"perfect: {shown()}")
    hosts.set_link("robot", up=SLOW, down=SLOW)
    wait_for(measured(lambda lat, bw: 0.04 < lat < 0.07), 30, "50 ms each way measured as 40-70 ms", *outputs)
    seen.append(f"50 ms each way: {shown()}")
    hosts.set_link("robot", up=NARROW, down=NARROW)
    # DDS's headers and acknowledgements take their share of the wire: a little less than 5 Mbit/s is right
    wait_for(measured(lambda lat, bw: lat < SMALL_S and 2.5e6 < bw < 6e6), 30,
             "5 Mbit/s each way measured as 2.5-6 Mbit/s, the latency small again", *outputs)
    seen.append(f"5 Mbit/s each way: {shown()}")
    REPORTED.append(f"link probes between emulated hosts (edge -> robot): {'; '.join(seen)}")


def test_the_plan_follows_the_robots_link_and_a_cut_link_is_a_lost_host(processes, hosts):
    """The robot is the faster host here (compute_scale 1 against the edge box's 0.5, in GFLOP/s and memory
    bandwidth: a robot with an accelerator beside a small edge PC), and the gateway is on the edge: on a good link
    the model runs on the robot, each token crossing the link twice; 150 ms each way costs more than the robot
    saves, so the model moves to the edge. Decoding SmolLM2 reads 0.6 GB a token, 50-100 ms at this machine's
    bandwidth: the edge's doubling is worth more than two 1 ms crossings and less than two 150 ms ones, with room
    on both sides for the machine's noise (two agents' bandwidths measured a fifth apart at equal scales)."""
    from edge_lam.fleet.model_pricing import model_chain  # torch and transformers: not at collection

    units, _ = model_chain(MODEL, "float16")
    fleet = Fleet(processes, hosts)
    outputs = [fleet.watch]
    # One after the other: on two cores, an agent measuring its compute while the other starts would measure that.
    for host, scale in (("edge", 0.5), ("robot", 1.0)):
        outputs.append(fleet.agent(host, scale))
        wait_for(lambda h=host: fleet.watch.adverts(h), 60, f"an advert of the {host} agent", *outputs)
    gflops = {h: (fleet.watch.adverts(h)[-1]["gflops"], fleet.watch.adverts(h)[-1]["bandwidth_gbps"])
              for h in ("robot", "edge")}
    # The cost model says that these link values must move the model, by more than the hysteresis (min_gain 10 %):
    # on a 1 ms link to the robot, on a 150 ms one to the edge.
    slow_s = FAR.latency_ms / 1e3
    assert expected_hosts(units, gflops, 0.001, 1e9) == {"robot"} and gain(units, gflops, 0.001, "robot") > 0.2, \
        gflops
    assert expected_hosts(units, gflops, slow_s, 1e9) == {"edge"} and gain(units, gflops, slow_s, "edge") > 0.2, \
        gflops
    coordinator = fleet.coordinator()
    outputs.append(coordinator)

    def follows(want: set[str]) -> Callable[[], bool]:
        """The last plan puts the model on ``want``, and so does the solver on the links the agents measure."""
        def check() -> bool:
            link = fleet.link("edge", "robot")
            return fleet.plan_hosts() == want and link is not None and expected_hosts(units, gflops, *link) == want
        return check

    wait_for(follows({"robot"}), 120, "a plan with the model on the robot over the perfect link", *outputs)
    wait_for(lambda: any(a["hosted"] for a in fleet.watch.adverts("robot")[-5:]), 90,
             "the robot agent running its modules", *outputs)

    hosts.set_link("robot", up=FAR, down=FAR)
    # A round in flight when the link changes gives a figure in between for a moment; the plan may move on it
    # already (the solver agrees), but it must stay on the edge once the link reads 150 ms.
    wait_for(lambda: 0.13 < fleet.link("edge", "robot")[0] < 0.2, 30, "the link measured as 130-200 ms", *outputs)
    latency_s = fleet.link("edge", "robot")[0]
    wait_for(follows({"edge"}), 60, "the model moved to the edge once the link measured 150 ms", *outputs)

    hosts.set_link("robot", up=LinkShape(), down=LinkShape())
    wait_for(follows({"robot"}), 60, "the model back on the robot once the link is fast again", *outputs)

    before = len(fleet.watch.plans())
    hosts.cut("robot")
    wait_for(lambda: len(fleet.watch.plans()) > before and fleet.plan_hosts() == {"edge"}, 30,
             "the robot's modules moved to the edge after its link was cut", *outputs)
    wait_for(lambda: any("host 'robot' left" in line for line in coordinator.text), 10,
             "the coordinator logging the robot as a lost host", *outputs)
    REPORTED.append(f"plan following the robot's link (advertised GFLOP/s and GB/s {gflops}; 150 ms measured as "
                    f"{latency_s * 1e3:.1f} ms): plans " + ", ".join(
                        f"v{p['plan']} {sorted({h for _, h in p['modules']})}" for p in fleet.watch.plans()))
