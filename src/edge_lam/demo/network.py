"""Where the demo's processes run: all on this machine's own network (``onehost``), or each in its host's network
namespace, the hosts joined by emulated links (``emulated``), so that every byte between two hosts is UDP through a
real IP stack, as between a robot and an edge PC.

Across emulated hosts every process gets the inter-host Fast DDS profile (UDP only: namespaces share /dev/shm, and
the one-host profile would pass messages through it) and one of the ROS 2 ways to discover peers on other machines:
``subnet`` (``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``, multicast), ``static`` (``ROS_STATIC_PEERS``: the hosts'
addresses, unicast) or ``server`` (a Fast DDS Discovery Server on the gateway's host, ``ROS_DISCOVERY_SERVER``).
The demo's monitor joins the gateway's host.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

from edge_lam.demo.graph import DemoConfig, ProcessSpec
from edge_lam.hosts import EmulatedHosts, has_rights
from edge_lam.hosts.joining import joined

__all__ = ["DISCOVERY_MODES", "DISCOVERY_SERVER_PORT", "NETWORKS", "DemoNetwork", "demo_network", "network_env"]

NETWORKS = ("onehost", "emulated")
DISCOVERY_MODES = ("subnet", "static", "server")
DISCOVERY_SERVER_PORT = 11811
EMULATED_PREFIX = "eldemo"  # the namespaces' names: eldemo-<host>; `edge-lam hosts down eldemo` removes leftovers


def network_env(profile: pathlib.Path, discovery: str, addresses: list[str], server: str | None = None
                ) -> dict[str, str]:
    """The ROS 2 and Fast DDS variables of a process on one of several hosts: the profile and the discovery mode."""
    env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)}
    if discovery == "subnet":
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    elif discovery == "static":
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
        env["ROS_STATIC_PEERS"] = ";".join(addresses)
    elif discovery == "server":
        if server is None:
            raise ValueError("discovery through a server needs the server's address")
        env["ROS_DISCOVERY_SERVER"] = f"{server}:{DISCOVERY_SERVER_PORT}"
    else:
        raise ValueError(f"discovery must be one of {', '.join(DISCOVERY_MODES)}, not {discovery!r}")
    return env


@dataclass
class DemoNetwork:
    """How to start a process of a host, with which environment, and where the monitor joins."""

    env: dict[str, str] = field(default_factory=dict)
    hosts: EmulatedHosts | None = None
    monitor_host: str | None = None
    extra: list[ProcessSpec] = field(default_factory=list)  # started first (the discovery server)

    def argv(self, spec: ProcessSpec) -> list[str]:
        return list(spec.argv) if self.hosts is None else self.hosts.command(spec.host, spec.argv)

    def monitor(self) -> contextlib.AbstractContextManager:
        """The block in which the demo creates its own ROS participant: inside the monitor's host, if emulated (a
        process's participants must all start in one network namespace, so it creates none before)."""
        if self.hosts is None:
            return contextlib.nullcontext()
        return joined(self.hosts.namespace(self.monitor_host))


@contextlib.contextmanager
def demo_network(network: str, discovery: str, config: DemoConfig, share: pathlib.Path) -> Iterator[DemoNetwork]:
    """Set the network up for the demo (and down after it, whatever happened)."""
    if network == "onehost":
        yield DemoNetwork(env={"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                                               "LOCALHOST")})
        return
    if network != "emulated":
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    if not has_rights():
        raise ValueError("--network emulated makes network namespaces and needs root (run it as root, or with "
                         "--network onehost)")
    names = [h.host_id for h in config.hosts]
    with EmulatedHosts(names, prefix=EMULATED_PREFIX) as hosts:
        addresses = [hosts.address(name) for name in names]
        server = hosts.address(config.gateway_host) if discovery == "server" else None
        env = network_env(share / "config" / "fastdds_interhost.xml", discovery, addresses, server)
        extra = []
        if server is not None:
            extra.append(ProcessSpec("discovery_server", (_fastdds_tool(), "discovery", "-l", server, "-p",
                                                          str(DISCOVERY_SERVER_PORT)), config.gateway_host))
        yield DemoNetwork(env=env, hosts=hosts, monitor_host=config.gateway_host, extra=extra)


def _fastdds_tool() -> str:
    """The ``fastdds`` tool, whose ``discovery`` verb runs a Discovery Server (the ``fast-discovery-server`` binary
    beside it refuses to be called directly, and finds its library only through the tool)."""
    path = shutil.which("fastdds")
    if path is None:
        raise ValueError("--discovery server needs the fastdds tool (the ros-fastdds wheel puts it in the virtual "
                         "environment's bin)")
    return path
