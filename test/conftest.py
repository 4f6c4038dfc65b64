"""Test-run hygiene: a ROS domain of this run's own, discovery kept on this host, every process stopped, and the
`processes` marker on every test that starts a process or a ROS participant."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import pathlib
import subprocess
import sys
import types

import pytest
import rclpy.context
import torch

from edge_lam.assets.cache import GEMMA3_ID, gemma3_skipped
from edge_lam.processes import stop_processes
from edge_lam.ros.fastdds_shm import SHM_DIR, clean_domain_ports, clean_zombies

# Set before anything initialises rclpy, and inherited by every process the tests start. A process the tests spawn
# through multiprocessing imports this file again: it keeps what pytest's process set (its own pid would pick another
# domain, and a test may have widened the discovery range for it).
if multiprocessing.parent_process() is None:
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("EDGE_LAM_TEST_DOMAIN_ID", str(10 + os.getpid() % 90))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

TEST_DIR = pathlib.Path(__file__).resolve().parent
REPO = TEST_DIR.parent


GEMMA = GEMMA3_ID
# Tests of Gemma run wherever setup prepared it (CI does, by default); a user who did not accept its terms of use
# skipped it, and those tests say so. Not prepared without the switch is a failure, not a skip.
requires_gemma = pytest.mark.skipif(
    gemma3_skipped(), reason="Gemma 3 270M was skipped at setup (--skip-gemma or EDGE_LAM_SKIP_GEMMA: its terms of "
    "use were not accepted)")


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
        clean_zombies()  # the Fast DDS files of any that had to be killed


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop_all()


# The `processes` marker (pytest.ini) lets `pytest -m "not processes"` run the pure cores alone. A test gets it at
# collection when it uses the `processes` fixture, or when its code or the code of a fixture it uses (or of a
# function or class of test/ that either names) names `subprocess`, `rclpy`, `ros_client`, `RosClient` or
# `Processes` (imported at the top or inside, under any alias). A test that starts one unseen, inside a call to
# edge_lam, carries `@pytest.mark.processes` itself: an unmarked test that starts a process or initialises an rclpy
# context fails and says so, so a fast run starts neither and a missing mark cannot go unnoticed.
STARTER_MODULES = {"subprocess", "rclpy", "ros_client"}
STARTER_NAMES = STARTER_MODULES | {"RosClient", "Processes"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("processes") is None and _starts_processes(item):
            item.add_marker(pytest.mark.processes)


def _starts_processes(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    if "processes" in item.fixturenames:
        return True
    fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
    seen: set[types.CodeType] = set()
    return any(_names_a_starter(f, seen) for f in [item.function, *fixtures] if _in_test_dir(f))


def _names_a_starter(function, seen: set[types.CodeType]) -> bool:
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    for name in _names(code):
        found = function.__globals__.get(name)
        if name.partition(".")[0] in STARTER_NAMES or _is_starter(found):
            return True
        if inspect.isfunction(found) and _in_test_dir(found) and _names_a_starter(found, seen):
            return True
        if inspect.isclass(found) and _in_test_dir(found) and any(
                _names_a_starter(member, seen) for member in vars(found).values() if inspect.isfunction(member)):
            return True
    return False


def _names(code: types.CodeType) -> set[str]:
    """The global, imported and attribute names the code uses, its lambdas' and nested functions' included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _is_starter(found) -> bool:
    if isinstance(found, types.ModuleType):
        return found.__name__.partition(".")[0] in STARTER_MODULES
    return found is Processes or getattr(found, "__module__", None) in STARTER_MODULES


def _in_test_dir(found) -> bool:
    module = sys.modules.get(getattr(found, "__module__", None) or "")
    return pathlib.Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(TEST_DIR)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if item.get_closest_marker("processes") is not None:
        # The test's own reference computations share the cores with the processes it started: torch's second
        # thread only makes both wait on each other (the whole model's 24 greedy tokens took 3x as long with two
        # threads as with one, next to a busy shard, on 2 cores). Pure-core tests keep torch's default.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return (yield)
        finally:
            torch.set_num_threads(threads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", _refused(item, "a process"))
        patch.setattr(rclpy.context.Context, "init", _refused(item, "an rclpy context"))
        return (yield)


def _refused(item: pytest.Item, what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{item.nodeid} starts {what} but is not marked `processes`: use the `processes` "
                           "fixture or RosClient, or mark it @pytest.mark.processes (see test/conftest.py)")
    return refuse


# Figures a test measures and reports rather than asserts (e.g. greedy agreement with fp16 on the wire).
REPORTED: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A test run leaves nothing in /dev/shm: what processes it had to kill left (Fast DDS segments no live process
    holds, 35 MB each) is removed, as `fastdds shm clean` does, and the port files of this run's domain that no
    listener holds; other runs' live segments and other domains' ports are never touched."""
    cleaned = clean_zombies()
    ports = clean_domain_ports(int(os.environ["ROS_DOMAIN_ID"]))  # the domain is this run's own, all stopped
    cleaned.removed += ports.removed
    cleaned.freed_bytes += ports.freed_bytes
    if cleaned.removed:
        REPORTED.append(f"removed {len(cleaned.removed)} Fast DDS files that no live process held from {SHM_DIR} "
                        f"({cleaned.freed_bytes / 2**20:.0f} MiB)")


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
