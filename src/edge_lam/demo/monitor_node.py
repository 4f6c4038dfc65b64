"""The demo's eyes: a node that watches the fleet's plan and adverts, the robot's tokens and reports, and prints them.

It only listens, except for the warm-up requests that tell when the chain serves and the questions ``ask`` sends
(with and without the fleet's adapter). What it sees goes into
``DemoRecords`` as plain values; ``console`` gets one line (or a few) per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_lam_msgs.msg import ComputeAdvert, InferenceRequest, InferenceResult, PlacementPlan, Report, SemanticTokens
from rclpy.node import Node

from edge_lam.chain.requests import Options, Request
from edge_lam.demo.graph import FLEET_NAMESPACE, DemoConfig
from edge_lam.demo.summary import DemoRecords, PlacedModule, PlanRecord, ReportRecord
from edge_lam.descriptors import Advert
from edge_lam.ros.qos import ADVERTS_READER, CONTROL, LATCHED, TOKENS
from edge_lam.wire.chain import from_stage_msgs
from edge_lam.wire.fleet import from_advert_msg, plan_assignments
from edge_lam.wire.requests import to_request_msg

__all__ = ["DemoMonitor", "format_plan", "format_report"]


def format_plan(plan: PlanRecord) -> str:
    """A few lines: each host and the modules it runs, in chain order."""
    lines = [f"placement v{plan.version} ({plan.solver}, expected {plan.expected_latency_s * 1e3:.1f} ms/token):"]
    for host in plan.hosts():
        modules = [m for m in plan.modules if m.host_id == host]
        compute = sum(m.expected_latency_s for m in modules)
        lines.append(f"    {host:>10}: {', '.join(m.module_id for m in modules)} ({compute * 1e3:.1f} ms/token)")
    return "\n".join(lines)


def format_report(number: int, report: ReportRecord) -> str:
    """The report and, under it, its latency breakdown with each module and the host it ran on."""
    if report.error:
        return f"[{report.t_s:7.1f} s] report {number} FAILED after {report.latency_s:.2f} s: {report.error}"
    parts = []
    for stage in report.stages:
        if stage.stage == "total":
            continue
        name = stage.stage.removeprefix("module:")
        parts.append(f"{name}@{stage.host_id} {stage.seconds * 1e3:.0f}" if stage.host_id
                     else f"{name} {stage.seconds * 1e3:.0f}")
    return (f"[{report.t_s:7.1f} s] report {number} ({report.total_s:.2f} s): {report.text}\n"
            f"             ms: {' + '.join(parts)} = {report.total_s * 1e3:.0f}")


class DemoMonitor(Node):
    def __init__(self, config: DemoConfig, console: Callable[[str], None] = print) -> None:
        super().__init__("demo_monitor", namespace=FLEET_NAMESPACE)
        self.records = DemoRecords()
        self.adverts: dict[str, Advert] = {}  # the newest of each host, for the transports' choice
        self.started = time.monotonic()
        self.bags_started_s: float | None = None  # since ``started``, once the bags play
        self._console = console
        self._warmups: dict[str, InferenceResult | None] = {}
        self.asked: dict[str, list[InferenceResult]] = {}  # request id -> its result chunks so far
        self._last_warmup = -float("inf")
        robot = f"/{config.robot_id}"
        self.create_subscription(PlacementPlan, "plan", self.on_plan, LATCHED)
        self.create_subscription(ComputeAdvert, "adverts", self.on_advert, ADVERTS_READER)
        for modality in config.modalities:
            self.create_subscription(SemanticTokens, f"{robot}/tokens/{modality}", self.on_tokens, TOKENS)
        self.create_subscription(Report, f"{robot}/reports", self.on_report, CONTROL)
        self.create_subscription(InferenceRequest, "requests", self.on_request, CONTROL)
        self.create_subscription(InferenceResult, "results", self.on_result, CONTROL)
        self._requests = self.create_publisher(InferenceRequest, "requests", CONTROL)

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def on_plan(self, msg: PlacementPlan) -> None:
        modules = tuple(PlacedModule(a.module.module_id, a.module.kind, a.module.layer_start, a.module.layer_end,
                                     a.host_id, a.expected_latency_s) for a in plan_assignments(msg))
        plan = PlanRecord(self.now_s(), msg.plan_id, msg.version, msg.solver, msg.expected_latency_s, modules)
        self.records.plans.append(plan)
        self._console(format_plan(plan))

    def on_advert(self, msg: ComputeAdvert) -> None:
        advert = from_advert_msg(msg)
        # Without the load, as the demo's coordinator takes them (use_load false): its hosts share one machine.
        self.adverts[advert.host_id] = from_advert_msg(msg, use_load=False)
        known = advert.host_id in self.records.hosts
        self.records.hosts[advert.host_id] = {
            "role": advert.role, "gflops": advert.compute_gflops, "bandwidth_gbps": advert.memory_bandwidth_gbps,
            "memory_total_mib": advert.memory_total_bytes / 2**20, "load": advert.load,
            "modules_hosted": list(advert.modules_hosted),
        }
        if not known:
            self._console(f"host {advert.host_id} ({advert.role}): {advert.compute_gflops:.1f} GFLOP/s, "
                          f"{advert.memory_bandwidth_gbps:.1f} GB/s, "
                          f"{advert.memory_total_bytes / 2**20:.0f} MiB for modules")

    def on_tokens(self, msg: SemanticTokens) -> None:
        if self.bags_started_s is not None:
            self.records.encode_s.setdefault(msg.modality, []).append(msg.encode_seconds)

    def on_request(self, msg: InferenceRequest) -> None:
        if msg.request_id.startswith("report-"):
            self.records.requests[msg.request_id] = self.now_s()

    def on_report(self, msg: Report) -> None:
        error = f"({msg.error_code}) {msg.error_message}" if msg.error_code else ""
        report = ReportRecord(self.now_s(), msg.request_id, msg.text, error, msg.latency_s, tuple(msg.sources),
                              tuple(from_stage_msgs(msg.timings)))
        self.records.reports.append(report)
        self._console(format_report(len(self.records.reports), report))

    def on_result(self, msg: InferenceResult) -> None:
        if msg.final and msg.request_id in self._warmups:
            self._warmups[msg.request_id] = msg
        if msg.request_id in self.asked:
            self.asked[msg.request_id].append(msg)

    def ask(self, request: Request) -> None:
        """Send a request; its result chunks go into ``asked``."""
        self.asked[request.request_id] = []
        self._requests.publish(to_request_msg(request))

    def answer(self, request_id: str) -> str | None:
        """The whole answer to an asked request (its error, if it failed), or None until its final chunk came."""
        chunks = self.asked[request_id]
        if not chunks or not chunks[-1].final:
            return None
        final = chunks[-1]
        return f"(error: {final.error_message})" if final.error_code else "".join(c.text for c in chunks)

    def chain_serves(self) -> bool:
        """True once a one-token request came back without error; until then, send one every few seconds."""
        if any(r is not None and not r.error_code for r in self._warmups.values()):
            return True
        waiting = any(r is None for r in self._warmups.values())
        if time.monotonic() - self._last_warmup > (10.0 if waiting else 2.0):
            request = Request(f"warmup-{len(self._warmups)}", prompt="Hello", options=Options(max_new_tokens=1))
            self._warmups[request.request_id] = None
            self._last_warmup = time.monotonic()
            self._requests.publish(to_request_msg(request))
        return False
