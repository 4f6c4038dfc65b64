"""Test-run hygiene: a ROS domain of this run's own, discovery kept on this host, and every process stopped."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from edge_lam.processes import stop_processes

# Set before anything initialises rclpy, and inherited by every process the tests start.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("EDGE_LAM_TEST_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

TEST_DIR = pathlib.Path(__file__).resolve().parent
REPO = TEST_DIR.parent


class Processes:
    """Starts processes for one test and stops all of them when it ends, whatever happened."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen] = []

    def start(self, *args: str | os.PathLike) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._started.append(process)
        return process

    def python(self, script: str, *args: str) -> subprocess.Popen:
        return self.start(sys.executable, TEST_DIR / script, *args)

    def stop_all(self) -> None:
        stop_processes(self._started, grace_s=2.5)


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop_all()


# Figures a test measures and reports rather than asserts (e.g. greedy agreement with fp16 on the wire).
REPORTED: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if REPORTED:
        terminalreporter.section("reported figures")
        for line in REPORTED:
            terminalreporter.write_line(line)


def finish(process: subprocess.Popen, timeout_s: float = 60.0) -> tuple[int, str]:
    """Wait for a process to end by itself; kill it after the time-out (rc -9). Return its rc and output."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=5)
    return process.returncode, output
