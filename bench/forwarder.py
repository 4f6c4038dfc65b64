"""What the emulated hosts' forwarder costs: the round trip it adds and the packet rate it carries.

Round trips: a UDP ping (200-byte datagrams, 5 ms apart, each its own round trip) between two emulated hosts whose
links are perfect (every frame crosses the forwarder twice each way: veth -> TAP, bridge, TAP -> veth), against
the same ping between two namespaces joined by a bare veth pair (the kernel alone). Rate: a sender blasts
datagrams as fast as it can for a while to a sink on the other host, which counts what arrives; the delivered rate
is the forwarder's (the sender alone goes faster, see the `veth` rows). Also with a shaped link (10 ms each way),
where every frame goes through the forwarder's heap. Needs root.

    python bench/forwarder.py [--pings 1000] [--seconds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import struct
import subprocess
import sys
import time

from edge_lam.hosts import NEEDS_ROOT, EmulatedHosts, LinkShape, has_rights
from edge_lam.hosts.netns import run

PORT = 7600
# Names of this run's own, so that two runs (or a run beside the tests) never take each other's namespaces.
PREFIX = f"elb{os.getpid() % 100000}"
BARE = (f"{PREFIX}bare-a", f"{PREFIX}bare-b")
HEADER = struct.Struct("!Id")


def ping(address: str, count: int, gap_s: float) -> None:
    """In the pinging process: round trips in ms, one JSON line."""
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        payload = b"x" * (200 - HEADER.size)
        for number in range(count):
            sent = time.monotonic()
            sock.sendto(HEADER.pack(number, sent) + payload, (address, PORT))
            try:
                while HEADER.unpack_from(sock.recv(2048))[0] != number:
                    pass
                rtts.append((time.monotonic() - sent) * 1e3)
            except TimeoutError:
                pass
            time.sleep(gap_s)
    print(json.dumps(rtts))


def echo(seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", PORT))
        sock.settimeout(seconds)
        print("ready", flush=True)
        try:
            while True:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)
        except TimeoutError:
            pass


def sink(seconds: float) -> None:
    """Count datagrams until none came for a second; one JSON line: count, first to last arrival."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", PORT))
        sock.settimeout(seconds + 5)
        print("ready", flush=True)
        count, first, last = 0, 0.0, 0.0
        buffer = bytearray(2048)
        try:
            while True:
                sock.recv_into(buffer)
                last = time.monotonic()
                if not count:
                    first = last
                    sock.settimeout(1.0)
                count += 1
        except TimeoutError:
            pass
    print(json.dumps({"count": count, "span_s": last - first}))


def blast(address: str, size: int, seconds: float) -> None:
    """Send datagrams of ``size`` bytes for ``seconds``; one JSON line: how many went out."""
    sent, payload = 0, b"x" * size
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                try:
                    sock.sendto(payload, (address, PORT))
                    sent += 1
                except OSError:  # the local queue is full: the network cannot take more
                    pass
    print(json.dumps({"sent": sent}))


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, __file__, *args]


def started(argv: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{argv} did not start")
    return process


def measure(server_ns: str, client_ns: str, address: str, pings: int, seconds: float) -> dict:
    figures = {}
    server = started(in_ns(server_ns, "--echo", str(pings * 0.01 + 10)))
    try:
        out = subprocess.run(in_ns(client_ns, "--ping", address, str(pings)), capture_output=True, text=True,
                             timeout=pings * 0.05 + 60, check=True).stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
    rtts = sorted(json.loads(out))
    figures["rtt_ms_p50"] = statistics.median(rtts)
    figures["rtt_ms_p99"] = rtts[int(len(rtts) * 0.99) - 1]
    figures["pings_answered"] = len(rtts) / pings
    for size in (64, 1400):
        server = started(in_ns(server_ns, "--sink", str(seconds)))
        sent = json.loads(subprocess.run(in_ns(client_ns, "--blast", address, str(size), str(seconds)),
                                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout)
        got = json.loads(server.communicate(timeout=seconds + 30)[0])
        rate = got["count"] / got["span_s"] if got["span_s"] > 0 else 0.0
        figures[f"pps_{size}B"] = rate
        figures[f"mbit_s_{size}B"] = rate * (size + 42) * 8 / 1e6  # with UDP, IP and Ethernet headers
        figures[f"delivered_{size}B"] = got["count"] / max(sent["sent"], 1)
    return figures


def bare_veth() -> None:
    for ns in BARE:
        run(["ip", "netns", "add", ns])
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
    run(["ip", "-n", BARE[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", BARE[1]])
    for index, ns in enumerate(BARE):
        run(["ip", "-n", ns, "addr", "add", f"10.78.0.{index + 2}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each rate run (default 3)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures to this file")
    parser.add_argument("--ping", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--echo", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--sink", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--blast", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping:
        return ping(args.ping[0], int(args.ping[1]), 0.005) or 0
    if args.echo:
        return echo(args.echo) or 0
    if args.sink:
        return sink(args.sink) or 0
    if args.blast:
        return blast(args.blast[0], int(args.blast[1]), float(args.blast[2])) or 0
    if not has_rights():
        print(NEEDS_ROOT, file=sys.stderr)
        return 2
    results = {}
    try:
        bare_veth()
        results["veth"] = measure(BARE[1], BARE[0], "10.78.0.3", args.pings, args.seconds)
    finally:
        for ns in BARE:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    with EmulatedHosts(["robot", "edge"], prefix=PREFIX) as hosts:
        edge = hosts.address("edge")
        results["forwarder"] = measure(hosts.namespace("edge"), hosts.namespace("robot"), edge, args.pings,
                                       args.seconds)
        for host in hosts.hosts:
            hosts.set_link(host, up=LinkShape(latency_ms=5.0), down=LinkShape(latency_ms=5.0))
        results["forwarder_10ms"] = measure(hosts.namespace("edge"), hosts.namespace("robot"), edge, args.pings,
                                            args.seconds)
    print(f"{'path':<16}{'rtt p50 ms':>11}{'rtt p99 ms':>11}{'pps 64B':>10}{'pps 1400B':>11}{'Mbit/s 1400B':>13}"
          f"{'delivered 64B':>14}")
    for name, f in results.items():
        print(f"{name:<16}{f['rtt_ms_p50']:>11.3f}{f['rtt_ms_p99']:>11.3f}{f['pps_64B']:>10.0f}"
              f"{f['pps_1400B']:>11.0f}{f['mbit_s_1400B']:>13.1f}{f['delivered_64B']:>14.1%}")
    added = results["forwarder"]["rtt_ms_p50"] - results["veth"]["rtt_ms_p50"]
    print(f"the forwarder adds {added:.3f} ms to a round trip at p50 (four crossings per round trip)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "added_rtt_ms_p50": added}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
