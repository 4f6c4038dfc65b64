"""What the demo saw, as plain values, and the summary it writes: placement, reports, where their time went.

``DemoRecords`` is filled by the monitor node from messages turned into plain values; ``summarise`` makes the JSON
summary, including the check that each report's stages add up to its total within ``TOLERANCE``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_lam.reporting.timings import Stage, stages_sum_s

if TYPE_CHECKING:
    from edge_lam.demo.adapter import AdapterAnswer

__all__ = [
    "TOLERANCE",
    "DemoRecords",
    "PlacedModule",
    "PlanRecord",
    "ReportRecord",
    "stage_label",
    "summarise",
    "within_tolerance",
    "write_summary",
]

# The stages of a report come from four processes' clocks; they must add up to its total within this much.
TOLERANCE = {"relative": 0.02, "absolute_s": 0.01}


@dataclass(frozen=True)
class PlacedModule:
    module_id: str
    kind: str
    layer_start: int
    layer_end: int
    host_id: str
    expected_latency_s: float


@dataclass(frozen=True)
class PlanRecord:
    t_s: float
    plan_id: str
    version: int
    solver: str
    expected_latency_s: float
    modules: tuple[PlacedModule, ...]

    def hosts(self) -> list[str]:
        """Hosts in chain order, each once."""
        return list(dict.fromkeys(m.host_id for m in self.modules))


@dataclass(frozen=True)
class ReportRecord:
    t_s: float
    request_id: str
    text: str
    error: str
    latency_s: float
    sources: tuple[str, ...]
    stages: tuple[Stage, ...]

    @property
    def total_s(self) -> float:
        return next((s.seconds for s in self.stages if s.stage == "total"), float("nan"))


@dataclass
class DemoRecords:
    """Everything the monitor keeps; times are seconds since the demo started."""

    hosts: dict[str, dict] = field(default_factory=dict)
    plans: list[PlanRecord] = field(default_factory=list)
    encode_s: dict[str, list[float]] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)
    reports: list[ReportRecord] = field(default_factory=list)
    adapter_answers: list[AdapterAnswer] = field(default_factory=list)  # with --adapter

    def unanswered(self) -> list[str]:
        answered = {r.request_id for r in self.reports}
        return [request_id for request_id in self.requests if request_id not in answered]


def stage_label(stage: Stage) -> str:
    """``module:blocks_0_8@robot`` for a module, the stage's name otherwise."""
    return f"{stage.stage}@{stage.host_id}" if stage.host_id else stage.stage


def within_tolerance(report: ReportRecord) -> bool:
    gap = abs(stages_sum_s(report.stages) - report.total_s)
    return gap <= TOLERANCE["relative"] * report.total_s + TOLERANCE["absolute_s"]


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"median": float(np.median(array)), "p99": float(np.percentile(array, 99))}


def summarise(records: DemoRecords, *, model: str, robot_id: str, duration_s: float, period_s: float,
              bags_started_s: float | None) -> dict:
    ok = [r for r in records.reports if not r.error and r.text]
    by_stage: dict[str, list[float]] = {}
    for report in ok:
        for stage in report.stages:
            by_stage.setdefault(stage_label(stage), []).append(stage.seconds)
    gaps = [abs(stages_sum_s(r.stages) - r.total_s) for r in ok]
    return {
        "model": model,
        "robot_id": robot_id,
        "duration_s": duration_s,
        "bags_started_s": bags_started_s,
        "period_s": period_s,
        "hosts": records.hosts,
        "plans": [dataclasses.asdict(p) for p in records.plans],
        "encoders": {
            modality: {"messages": len(values), "encode_ms": {k: v * 1e3 for k, v in _percentiles(values).items()}}
            for modality, values in sorted(records.encode_s.items()) if values
        },
        "ticks": len(records.requests),
        "reports_ok": len(ok),
        "reports_failed": len(records.reports) - len(ok),
        "unanswered": records.unanswered(),
        "latency_s": _percentiles([r.total_s for r in ok]) if ok else {},
        "stages_s": {label: _percentiles(values) for label, values in by_stage.items()},
        "consistency": {
            "tolerance": TOLERANCE,
            "max_gap_s": max(gaps, default=0.0),
            "stages_add_up": all(within_tolerance(r) for r in ok),
        },
        "reports": [
            {"t_s": r.t_s, "request_id": r.request_id, "text": r.text, "error": r.error, "latency_s": r.latency_s,
             "total_s": r.total_s, "sources": list(r.sources),
             "stages": [{"stage": s.stage, "host_id": s.host_id, "seconds": s.seconds} for s in r.stages]}
            for r in records.reports
        ],
    }


def write_summary(summary: dict, path: pathlib.Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")
