"""A set of emulated hosts, built, changed and taken apart: the API tests, benches and the CLI share.

    with EmulatedHosts(["robot", "edge"], prefix="el61") as hosts:
        subprocess.run(hosts.command("robot", ["python", "talker.py"]), timeout=30)
        hosts.set_link("robot", up=LinkShape(latency_ms=50), down=LinkShape(latency_ms=50))

The set's run directory (``/run/edge_lam/<prefix>``) holds what a fresh process needs to find it again:
``hosts.json`` (the topology), ``links.json`` (the links the forwarder applies), ``forwarder.pid``,
``forwarder.json`` (its frame counts) and ``forwarder.log``. ``down_prefix`` takes apart whatever a prefix left,
from any process, even after a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from edge_lam.hosts import netns
from edge_lam.hosts.links import HostLink, LinkShape, read_links, write_links
from edge_lam.hosts.netns import Counters, HostsError
from edge_lam.hosts.topology import HOST_DEVICE, HostSet, check_prefix

__all__ = ["RUN_ROOT", "EmulatedHosts", "default_prefix", "down_prefix"]

RUN_ROOT = pathlib.Path("/run/edge_lam")
START_TIMEOUT_S = 15.0
APPLY_TIMEOUT_S = 5.0
STOP_GRACE_S = 3.0


def default_prefix() -> str:
    return os.environ.get("EDGE_LAM_HOSTS_PREFIX", "el")


class EmulatedHosts:
    """Hosts as network namespaces joined through a bridge by a forwarder that shapes each host's link. ``up`` on
    entering a ``with`` block, ``down`` on leaving it (also on an exception)."""

    def __init__(self, hosts: Sequence[str], prefix: str | None = None, subnet: str | None = None,
                 mtu: int = 1500, seed: int = 0, run_root: pathlib.Path = RUN_ROOT) -> None:
        self.topology = HostSet.build(hosts, prefix or default_prefix(), subnet, mtu)
        self.seed = seed
        self.run_dir = run_root / self.topology.prefix
        self._forwarder: subprocess.Popen | None = None

    @staticmethod
    def attach(prefix: str | None = None, run_root: pathlib.Path = RUN_ROOT) -> EmulatedHosts:
        """The set a prefix names, as ``up`` (here or in another process) left it; HostsError when it is not up."""
        prefix = check_prefix(prefix or default_prefix())
        try:
            topology = HostSet.from_json((run_root / prefix / "hosts.json").read_text())
        except (OSError, ValueError, KeyError) as err:
            raise HostsError(f"no emulated hosts with prefix {prefix!r} are up ({err})") from None
        return EmulatedHosts(topology.hosts, topology.prefix, topology.subnet, topology.mtu, run_root=run_root)

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.topology.hosts

    def __enter__(self) -> EmulatedHosts:
        self.up()
        return self

    def __exit__(self, *_) -> None:
        self.down()

    def up(self) -> None:
        """Build the namespaces, devices and addresses, start the forwarder and wait until it holds every device.
        Refuses when the prefix is in use; anything half-built is taken apart before the error is raised."""
        netns.require_rights()
        left = netns.namespaces_with_prefix(self.prefix)
        if left:
            raise HostsError(f"prefix {self.prefix!r} is in use ({', '.join(left)}); take it apart with "
                             f"`edge-lam hosts down --prefix {self.prefix}` or choose another prefix")
        try:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir.mkdir(parents=True)
            (self.run_dir / "hosts.json").write_text(self.topology.to_json())
            write_links(self.run_dir / "links.json", {host: HostLink() for host in self.hosts})
            for argv in self.topology.commands(sys.executable):
                netns.run(argv)
            self._start_forwarder()
        except BaseException:
            self.down()
            raise

    def _start_forwarder(self) -> None:
        with open(self.run_dir / "forwarder.log", "ab") as log:
            self._forwarder = subprocess.Popen(
                ["ip", "netns", "exec", self.topology.switch, sys.executable, "-m", "edge_lam.hosts.forwarder",
                 str(self.run_dir), "--seed", str(self.seed)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.run_dir / "forwarder.pid").exists():
            if self._forwarder.poll() is not None or time.monotonic() > deadline:
                raise HostsError(f"the forwarder did not start: {self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.run_dir / "forwarder.log").read_text()[-2000:].strip() or "(no output)"
        return "(no log)"

    def down(self) -> None:
        """Stop the forwarder and every process left in the set's namespaces, delete the namespaces (with them
        every device) and the run directory. Safe to call twice, and on a set that never came up."""
        if self._forwarder is not None:
            with contextlib.suppress(OSError):
                self._forwarder.terminate()
            try:
                self._forwarder.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._forwarder.kill()
                self._forwarder.wait(timeout=STOP_GRACE_S)
            self._forwarder = None
        down_prefix(self.prefix, self.run_dir.parent)

    def namespace(self, host: str) -> str:
        return self.topology.namespace(host)

    def address(self, host: str) -> str:
        return self.topology.address(host)

    def command(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """``argv`` run inside the host's namespace. The environment and working directory are the caller's, with
        ``env`` set on top (through ``env``, so nothing else the caller starts sees it)."""
        settings = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        return ["ip", "netns", "exec", self.namespace(host), *settings, *argv]

    def links(self) -> dict[str, HostLink]:
        """Every host's link as the set's links file says (a host it does not name has a perfect link)."""
        try:
            stored = read_links(self.run_dir / "links.json")
        except OSError as err:
            raise HostsError(f"set {self.prefix!r} is not up ({err})") from None
        return {host: stored.get(host, HostLink()) for host in self.hosts}

    def set_link(self, host: str, up: LinkShape | None = None, down: LinkShape | None = None) -> None:
        """Reshape a host's link (a direction left None keeps its shape) and wait until the forwarder applies it."""
        self._change(host, lambda link: dataclasses.replace(link, up=up or link.up, down=down or link.down))

    def cut(self, host: str) -> None:
        """Drop every frame to and from the host, queued ones included, until ``restore``."""
        self._change(host, lambda link: dataclasses.replace(link, cut=True))

    def restore(self, host: str) -> None:
        self._change(host, lambda link: dataclasses.replace(link, cut=False))

    def _change(self, host: str, change) -> None:
        self.topology.index(host)
        links = self.links()
        links[host] = change(links[host])
        path = self.run_dir / "links.json"
        write_links(path, links)
        stat = path.stat()
        wanted = f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while self.forwarder_stats().get("links") != wanted:
            if time.monotonic() > deadline:
                raise HostsError(f"the forwarder of {self.prefix!r} did not apply the new links within "
                                 f"{APPLY_TIMEOUT_S:g} s (is it running? {self._log_tail()})")
            time.sleep(0.005)

    def forwarder_stats(self) -> dict:
        """The forwarder's last report: per host and direction, frames read, dropped (loss, cut, full queue),
        failed to send and queued; "links" names the links file version it applies."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.run_dir / "forwarder.json").read_text())
        return {}

    def counters(self, host: str) -> Counters:
        """Bytes and packets the host's eth0 received and sent, as the kernel counts them."""
        return netns.device_counters(self.namespace(host), HOST_DEVICE)

    def forwarder_pid(self) -> int | None:
        """The running forwarder's pid, or None."""
        return _forwarder_pid(self.run_dir)


def _forwarder_pid(run_dir: pathlib.Path) -> int | None:
    """The pid in the pid file if that process is still a forwarder of this run directory (pids get reused)."""
    try:
        pid = int((run_dir / "forwarder.pid").read_text())
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"edge_lam.hosts.forwarder" in cmdline and str(run_dir).encode() in cmdline else None


def down_prefix(prefix: str | None = None, run_root: pathlib.Path = RUN_ROOT) -> list[str]:
    """Take apart every set of a prefix, running or left by a crash: the forwarder (by its pid file), every process
    in a ``<prefix>-*`` namespace, the namespaces, the run directory. Returns the namespaces deleted."""
    netns.require_rights()
    prefix = check_prefix(prefix or default_prefix())
    run_dir = run_root / prefix
    pid = _forwarder_pid(run_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    namespaces = netns.namespaces_with_prefix(prefix)
    netns.stop_namespace_processes(namespaces, STOP_GRACE_S)
    for ns in namespaces:
        netns.delete_namespace(ns)
    shutil.rmtree(run_dir, ignore_errors=True)
    return namespaces
