"""The shape of a set of emulated hosts as values: names, addresses and the ``ip`` commands that build it.

A set named by a prefix is one namespace per host (``<prefix>-<host>``) and one switch namespace (``<prefix>-lan``)
that holds the bridge. Each host's ``eth0`` is one end of a veth pair whose other end (``vh<i>``) lies in the switch
namespace, outside the bridge; the forwarder moves frames between it and a TAP device (``th<i>``) that is a bridge
port. Every interface is created inside its namespace, so sets never collide on names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import zlib
from collections.abc import Sequence

__all__ = ["HOST_DEVICE", "HostSet", "TopologyError", "check_prefix", "default_subnet"]

HOST_DEVICE = "eth0"
BRIDGE = "br0"
MAX_HOSTS = 200
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,9}")
_HOST = re.compile(r"[a-z][a-z0-9_]{0,31}")


class TopologyError(ValueError):
    """A set that cannot be built as asked (bad names, addresses or MTU); the message says which part."""


def check_prefix(prefix: str) -> str:
    """The prefix, if it is a valid one (it names namespaces and a run directory: nothing else may slip in)."""
    if not _PREFIX.fullmatch(prefix):
        raise TopologyError(f"prefix {prefix!r}: 1 to 10 lower-case letters and digits, starting with a letter")
    return prefix


def default_subnet(prefix: str) -> str:
    """A /24 of 10.77.0.0/16 picked by the prefix, so packets of different sets are told apart in captures."""
    return f"10.77.{zlib.crc32(prefix.encode()) % 256}.0/24"


@dataclasses.dataclass(frozen=True)
class HostSet:
    """Hosts (in order: host i gets address .i+2, the bridge .1), the subnet and MTU they share."""

    prefix: str
    hosts: tuple[str, ...]
    subnet: str
    mtu: int = 1500

    @staticmethod
    def build(hosts: Sequence[str], prefix: str, subnet: str | None = None, mtu: int = 1500) -> HostSet:
        return HostSet(prefix, tuple(hosts), subnet or default_subnet(prefix), mtu)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not self.hosts:
            raise TopologyError("a set needs at least one host")
        for host in self.hosts:
            if not _HOST.fullmatch(host) or host == "lan":
                raise TopologyError(f"host name {host!r}: 1 to 32 lower-case letters, digits and _, starting with a "
                                    "letter, and not 'lan' (the switch)")
        if len(set(self.hosts)) != len(self.hosts):
            raise TopologyError(f"host names repeat: {list(self.hosts)}")
        try:
            network = ipaddress.IPv4Network(self.subnet)
        except ValueError as err:
            raise TopologyError(f"subnet {self.subnet!r}: {err}") from None
        if network.num_addresses - 3 < len(self.hosts) or len(self.hosts) > MAX_HOSTS:
            raise TopologyError(f"subnet {self.subnet} holds too few addresses for {len(self.hosts)} hosts and the "
                                f"bridge (at most {MAX_HOSTS} hosts)")
        if not 576 <= self.mtu <= 9000:
            raise TopologyError(f"MTU {self.mtu}: must be between 576 and 9000")

    @property
    def switch(self) -> str:
        """The namespace of the bridge and the forwarder."""
        return f"{self.prefix}-lan"

    def namespace(self, host: str) -> str:
        self.index(host)
        return f"{self.prefix}-{host}"

    def namespaces(self) -> list[str]:
        return [self.namespace(h) for h in self.hosts] + [self.switch]

    def index(self, host: str) -> int:
        try:
            return self.hosts.index(host)
        except ValueError:
            raise KeyError(f"no host {host!r} in set {self.prefix!r} (hosts: {', '.join(self.hosts)})") from None

    def address(self, host: str) -> str:
        network = ipaddress.IPv4Network(self.subnet)
        return str(network.network_address + self.index(host) + 2)

    @property
    def bridge_address(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    @property
    def prefix_length(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def lan_device(self, host: str) -> str:
        """The switch side of the host's veth pair, read and written by the forwarder."""
        return f"vh{self.index(host)}"

    def tap_device(self, host: str) -> str:
        """The host's bridge port, a TAP device the forwarder holds."""
        return f"th{self.index(host)}"

    def commands(self, python: str) -> list[list[str]]:
        """The commands (argv) that build the set, namespaces first; the forwarder attaches afterwards. ``python``
        runs ``edge_lam.hosts.offloads`` in each host's namespace."""
        lan, mtu = self.switch, str(self.mtu)
        commands = [["ip", "netns", "add", ns] for ns in self.namespaces()]
        # IPv6 off everywhere: its autoconfiguration chatter would blur the counters, and DDS speaks IPv4 here.
        commands += [["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                      "net.ipv6.conf.default.disable_ipv6=1"] for ns in self.namespaces()]
        commands += [["ip", "-n", lan, "link", "set", "lo", "up"],
                     ["ip", "-n", lan, "link", "add", BRIDGE, "mtu", mtu, "type", "bridge", "mcast_snooping", "0",
                      "stp_state", "0"],
                     ["ip", "-n", lan, "addr", "add", f"{self.bridge_address}/{self.prefix_length}", "dev", BRIDGE],
                     ["ip", "-n", lan, "link", "set", BRIDGE, "up"]]
        for host in self.hosts:
            ns, veth, tap = self.namespace(host), self.lan_device(host), self.tap_device(host)
            commands += [
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", lan, "link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", HOST_DEVICE,
                 "netns", ns],
                ["ip", "-n", lan, "link", "set", veth, "promisc", "on", "up"],
                ["ip", "-n", lan, "tuntap", "add", "mode", "tap", "name", tap],
                ["ip", "-n", lan, "link", "set", tap, "mtu", mtu, "txqueuelen", "10000", "master", BRIDGE, "up"],
                ["ip", "netns", "exec", ns, python, "-m", "edge_lam.hosts.offloads", HOST_DEVICE],
                ["ip", "-n", ns, "link", "set", HOST_DEVICE, "mtu", mtu, "up"],
                ["ip", "-n", ns, "addr", "add", f"{self.address(host)}/{self.prefix_length}", "dev", HOST_DEVICE],
                # Multicast (SPDP discovery to 239.255.0.1) needs a route; the default one serves it.
                ["ip", "-n", ns, "route", "add", "default", "via", self.bridge_address, "dev", HOST_DEVICE],
            ]
        return commands

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> HostSet:
        data = json.loads(text)
        return HostSet(data["prefix"], tuple(data["hosts"]), data["subnet"], int(data["mtu"]))
