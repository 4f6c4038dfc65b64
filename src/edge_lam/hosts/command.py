"""``edge-lam hosts up|down|status|link``: the emulated hosts from a terminal. Each action returns an exit status
and prints what it did; errors are one line on stderr (2: usage or missing rights, 1: the system said no)."""

from __future__ import annotations

import argparse
import sys

from edge_lam.hosts.emulated import EmulatedHosts, default_prefix, down_prefix
from edge_lam.hosts.links import LinkSpecError, format_link_spec, parse_link_spec
from edge_lam.hosts.netns import HostsError, NeedsRootError
from edge_lam.hosts.topology import TopologyError

__all__ = ["run_hosts_command"]


def run_hosts_command(args: argparse.Namespace) -> int:
    action = {"up": _up, "down": _down, "status": _status, "link": _link}[args.action]
    try:
        return action(args)
    except NeedsRootError as err:
        print(err, file=sys.stderr)
        return 2
    except (LinkSpecError, TopologyError, KeyError) as err:
        print(f"edge-lam hosts {args.action}: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except HostsError as err:
        print(f"edge-lam hosts {args.action}: error: {err}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    hosts = EmulatedHosts(args.hosts, prefix=args.prefix, subnet=args.subnet, mtu=args.mtu, seed=args.seed)
    hosts.up()
    for host in hosts.hosts:
        print(f"{host}: namespace {hosts.namespace(host)}, address {hosts.address(host)}")
    print(f"forwarder pid {hosts.forwarder_pid()}; run a command on a host with `ip netns exec "
          f"{hosts.namespace(hosts.hosts[0])} COMMAND`; take the set apart with `edge-lam hosts down --prefix "
          f"{hosts.prefix}`")
    return 0


def _down(args: argparse.Namespace) -> int:
    removed = down_prefix(args.prefix)
    print(f"removed {', '.join(removed)}" if removed else f"nothing of prefix {args.prefix or default_prefix()!r} "
          "was up")
    return 0


def _status(args: argparse.Namespace) -> int:
    hosts = EmulatedHosts.attach(args.prefix)
    pid = hosts.forwarder_pid()
    print(f"prefix {hosts.prefix}: subnet {hosts.topology.subnet}, MTU {hosts.topology.mtu}, "
          f"forwarder {'pid ' + str(pid) if pid else 'NOT RUNNING'}")
    stats = hosts.forwarder_stats().get("hosts", {})
    for host, link in hosts.links().items():
        counters = hosts.counters(host)
        print(f"{host}: {hosts.namespace(host)} {hosts.address(host)}{'  CUT' if link.cut else ''}")
        print(f"  up   {format_link_spec(link.up):<40} {_frames(stats.get(host, {}).get('up'))}")
        print(f"  down {format_link_spec(link.down):<40} {_frames(stats.get(host, {}).get('down'))}")
        print(f"  eth0 rx {counters.rx_bytes} B / {counters.rx_packets} packets, tx {counters.tx_bytes} B / "
              f"{counters.tx_packets} packets")
    return 0


def _frames(stats: dict | None) -> str:
    if not stats:
        return ""
    return f"frames {stats['frames']}, dropped {stats['dropped']}, queued {stats['queued']}"


def _link(args: argparse.Namespace) -> int:
    hosts = EmulatedHosts.attach(args.prefix)
    up = parse_link_spec(args.up) if args.up is not None else None
    down = parse_link_spec(args.down) if args.down is not None else None
    if up is None and down is None and not args.cut and not args.restore:
        print("edge-lam hosts link: error: say what to change: --up, --down, --cut or --restore", file=sys.stderr)
        return 2
    if up is not None or down is not None:
        hosts.set_link(args.host, up=up, down=down)
    if args.cut:
        hosts.cut(args.host)
    if args.restore:
        hosts.restore(args.host)
    link = hosts.links()[args.host]
    print(f"{args.host}: up {format_link_spec(link.up)}, down {format_link_spec(link.down)}"
          f"{', CUT' if link.cut else ''}")
    return 0
