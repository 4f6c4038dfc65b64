"""One end of a UDP exchange between emulated hosts, run by test_hosts.py inside a host's namespace.

    udp_peer.py echo PORT [GROUP]                 send every datagram back, until IDLE_S pass without one; with
                                                  GROUP, also those sent to that multicast group
    udp_peer.py ping ADDRESS PORT COUNT SIZE GAP  send COUNT numbered datagrams of SIZE bytes, GAP seconds apart,
                                                  one JSON line: sent, received (numbers) and round trips in ms

``ping`` waits up to WAIT_S after its last datagram for late echoes; every datagram carries its number and send
time, so a lost one is never mistaken for a late one.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import time

IDLE_S = 30.0
WAIT_S = 2.0
HEADER = struct.Struct("!Id")


def echo(port: int, group: str | None) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        if group:
            membership = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")  # struct ip_mreq: any interface
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.settimeout(IDLE_S)
        print("ready", flush=True)
        while True:
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                return 0
            sock.sendto(data, peer)


def ping(address: str, port: int, count: int, size: int, gap_s: float) -> int:
    received: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, selectors.DefaultSelector() as selector:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        padding = b"x" * max(size - HEADER.size, 0)
        sent, next_send, deadline = 0, time.monotonic(), float("inf")
        while time.monotonic() < deadline:
            now = time.monotonic()
            if sent < count and now >= next_send:
                sock.sendto(HEADER.pack(sent, now) + padding, (address, port))
                sent, next_send = sent + 1, now + gap_s
                if sent == count:
                    deadline = now + WAIT_S
            wait = max(min(next_send if sent < count else deadline, deadline) - time.monotonic(), 0.0)
            if selector.select(wait):
                data = sock.recv(65535)
                number, stamp = HEADER.unpack_from(data)
                received.setdefault(number, (time.monotonic() - stamp) * 1e3)
    print(json.dumps({"sent": sent, "received": sorted(received), "rtt_ms": [received[n] for n in sorted(received)]}))
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "echo":
        sys.exit(echo(int(args[0]), args[1] if len(args) > 1 else None))
    sys.exit(ping(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4])))
