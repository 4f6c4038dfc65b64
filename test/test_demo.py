"""`edge-lam demo`, short, in a test: it starts its graph, gives a report for every tick, writes a summary whose
figures agree and two plots, exits 0 by itself and leaves no process behind."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import shutil

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from PIL import Image

from conftest import REPORTED, finish

EDGE_LAM = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam" / "edge-lam"
DURATION_S, PERIOD_S = 12.0, 4.0


def processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that contain ``text``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone meanwhile
                continue
            if text in cmdline and entry.name != str(os.getpid()):
                found.append(cmdline)
    return found


def test_a_short_demo_reports_on_every_tick_and_writes_a_summary_that_adds_up(processes, tmp_path):
    params = tmp_path / "demo.yaml"  # a path of this test's own: every process the demo starts names it
    shutil.copy(pathlib.Path(get_package_share_directory("edge_lam")) / "config" / "demo.yaml", params)
    output = tmp_path / "out"
    demo = processes.start(EDGE_LAM, "demo", "--duration", str(DURATION_S), "--period", str(PERIOD_S),
                           "--max-new-tokens", "16", "--output", output, "--params-file", params)
    rc, console = finish(demo, timeout_s=420)
    assert rc == 0, console[-3000:]
    assert not processes_naming(str(params)), "the demo left processes running"

    summary = json.loads((output / "summary.json").read_text())
    # Ticks: one every PERIOD_S while the bags play (the first needs tokens first), each with a non-empty report.
    assert summary["ticks"] >= DURATION_S // PERIOD_S - 1, summary["ticks"]
    reports = summary["reports"]
    assert len(reports) == summary["ticks"] and not summary["unanswered"]
    assert all(r["text"].strip() and not r["error"] for r in reports), reports
    # A report uses the tokens that have arrived: a tick before one bag's first tokens reports on the other alone
    # (the odometry encoder needs a window of poses first). The bags loop, so a source once used stays in every
    # later report, and by the end both are used.
    sources = [set(r["sources"]) for r in reports]
    assert all(s and s <= {"image/camera", "odometry/odom"} for s in sources), sources
    assert all(a <= b for a, b in itertools.pairwise(sources)), f"a report left out a source used before: {sources}"
    assert sources[-1] == {"image/camera", "odometry/odom"}, sources

    # The model is split across both hosts by the coordinator, and every report ran on that chain.
    plan = summary["plans"][-1]
    assert {m["host_id"] for m in plan["modules"]} == {"robot", "edge"}
    kinds = [m["kind"] for m in plan["modules"]]
    assert kinds[0] == "embedding" and kinds[-1] == "head"
    for report in reports:
        modules = {(s["stage"].removeprefix("module:"), s["host_id"]) for s in report["stages"]
                   if s["stage"].startswith("module:")}
        assert modules == {(m["module_id"], m["host_id"]) for m in plan["modules"]}

    # The stages add up to the total within the stated tolerance, and the total is what the reporter measured.
    tolerance = summary["consistency"]["tolerance"]
    for report in reports:
        parts = sum(s["seconds"] for s in report["stages"] if s["stage"] != "total")
        assert abs(parts - report["total_s"]) <= tolerance["relative"] * report["total_s"] + tolerance["absolute_s"]
        encode = next(s["seconds"] for s in report["stages"] if s["stage"] == "encode")
        assert abs(report["total_s"] - (encode + report["latency_s"])) < 1e-6
        assert report["latency_s"] > sum(s["seconds"] for s in report["stages"] if s["stage"].startswith("module:"))
    assert summary["consistency"]["stages_add_up"]
    assert summary["encoders"]["image"]["messages"] > 0 and summary["encoders"]["odometry"]["messages"] > 0

    for name in ("latency_per_stage.png", "placement.png"):
        with Image.open(output / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 100
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 8, f"{name} is blank"
    assert "placement v" in console and "report 1 (" in console
    # The control plane was signed: every fleet node trusted the demo's keys, none ran unauthenticated.
    logs = {log.name: log.read_text() for log in (output / "logs").glob("*.log")}
    signing = [name for name, text in logs.items() if "control plane signed as" in text]
    assert {"coordinator.log", "gateway.log", "host_agent_robot.log", "host_agent_edge.log"} <= set(signing), signing
    assert not [name for name, text in logs.items() if "control plane not authenticated" in text]
    assert sorted(p.name for p in (output / "keys").iterdir()) == ["edge.key", "edge.pub", "robot.key", "robot.pub"]
    placement = [(m["module_id"], m["host_id"]) for m in plan["modules"]]
    REPORTED.append(f"demo: {len(reports)} reports in {DURATION_S:g} s of bags, latency median "
                    f"{summary['latency_s']['median']:.2f} s; plan {placement}")
