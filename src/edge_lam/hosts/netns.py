"""The calls to ``ip`` that emulated hosts need, and the rights check that comes before them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence

__all__ = ["NEEDS_ROOT", "Counters", "HostsError", "NeedsRootError", "delete_namespace", "device_counters",
           "has_rights", "namespaces_with_prefix", "require_rights", "run", "stop_namespace_processes"]

NEEDS_ROOT = "edge-lam hosts: needs root (CAP_NET_ADMIN) to create network namespaces; run with sudo"
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # `ip netns add` also mounts, which needs CAP_SYS_ADMIN
TIMEOUT_S = 30.0


class HostsError(RuntimeError):
    """Emulated hosts could not be built, changed or read; the message says what and why."""


class NeedsRootError(HostsError):
    def __init__(self) -> None:
        super().__init__(NEEDS_ROOT)


@dataclasses.dataclass(frozen=True)
class Counters:
    """What a host's eth0 counted, seen from the host: rx came from the LAN, tx went to it."""

    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int


def has_rights() -> bool:
    """Whether this process may create namespaces and devices (root, or both capabilities)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as status:
            effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return all(effective >> bit & 1 for bit in (CAP_NET_ADMIN, CAP_SYS_ADMIN))


def require_rights() -> None:
    if not has_rights():
        raise NeedsRootError()


def run(argv: Sequence[str], timeout_s: float = TIMEOUT_S) -> str:
    """Run a command; its stdout, or HostsError with the command and its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HostsError(f"{' '.join(argv)}: {err}") from None
    if done.returncode != 0:
        raise HostsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces_with_prefix(prefix: str) -> list[str]:
    """The namespaces named ``<prefix>-*`` (any set of that prefix, also one a crashed run left)."""
    names = [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def stop_namespace_processes(namespaces: Sequence[str], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, every process still running in the namespaces: once a namespace
    is deleted nothing can reach them, and they keep its devices alive."""
    pids: set[int] = set()
    for ns in namespaces:
        pids |= {int(p) for p in run(["ip", "netns", "pids", ns]).split()}
    pids.discard(os.getpid())
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            _signal(pid, signum)
        deadline = time.monotonic() + grace_s
        while (pids := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pids:
            return


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an exited child waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def delete_namespace(ns: str) -> None:
    run(["ip", "netns", "del", ns])


def device_counters(ns: str, device: str) -> Counters:
    """The kernel's counters of a device in a namespace (``ip -s -j link``)."""
    try:
        (entry,) = json.loads(run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", device]))
        stats = entry["stats64"]
        return Counters(rx_bytes=stats["rx"]["bytes"], rx_packets=stats["rx"]["packets"],
                        tx_bytes=stats["tx"]["bytes"], tx_packets=stats["tx"]["packets"])
    except (ValueError, KeyError, TypeError) as err:
        raise HostsError(f"counters of {device} in {ns}: unexpected output of ip ({err})") from None
