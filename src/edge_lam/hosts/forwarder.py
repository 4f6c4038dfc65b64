"""The forwarder of a set of emulated hosts: one process in the switch namespace that carries every frame between
each host's veth and its bridge port, delaying, rate-limiting, dropping or cutting it as the host's link says.

    ip netns exec <prefix>-lan python -m edge_lam.hosts.forwarder RUN_DIR [--seed N]

RUN_DIR holds ``hosts.json`` (the set, written by EmulatedHosts.up) and ``links.json`` (the links, read again
whenever it changes: the file is checked every ``CHECK_S``). The forwarder writes ``forwarder.pid`` once every
device is open (the sign that the set is up) and ``forwarder.json`` (frames and drops per host and direction) every
``STATS_S`` while they change. SIGTERM or SIGINT end it.

Per host, ``up`` reads the veth end (an AF_PACKET socket: every frame the host sent) and writes the TAP device (the
bridge switches it on, ARP and multicast included); ``down`` reads the TAP (every frame the bridge sends the host)
and writes the veth. A perfect direction with nothing queued sends a frame straight from the receive buffer; every
other frame waits in one heap ordered by release time (see ``shaping``). Nothing is logged per frame.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import pathlib
import random
import selectors
import signal
import socket
import struct
import sys
import time

from edge_lam.hosts.links import PERFECT, HostLink, LinkShape, LinkSpecError, read_links
from edge_lam.hosts.shaping import DirectionShaper
from edge_lam.hosts.topology import HostSet

__all__ = ["main"]

CHECK_S = 0.02
STATS_S = 0.5
BATCH = 64  # frames read from one device before the others get a turn
SOCKET_BUFFER = 8 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h: past net.core.*mem_max, as root may
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23  # linux/if_packet.h: a packet socket ignores the frames it sends
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name: str) -> int:
    """Attach to the TAP device ``ip tuntap add`` made (it must be in this process's namespace)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def open_packet_socket(device: str) -> socket.socket:
    """A raw socket that sees every frame arriving on ``device`` and sends frames out of it. Created with
    protocol 0 so that it receives nothing until bound to the one device."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    sock.bind((device, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class Direction:
    """One direction of one host's link: where frames come from, where they go, how they are shaped, what
    happened to them."""

    __slots__ = ("cut", "dropped", "fast", "frames", "queued", "read", "send", "send_failed", "shaper")

    def __init__(self, read, send, rng: random.Random) -> None:
        self.read, self.send = read, send
        self.shaper = DirectionShaper(PERFECT, rng)
        self.fast, self.cut, self.queued = True, False, 0
        self.frames = self.dropped = self.send_failed = 0

    def apply(self, shape: LinkShape, cut: bool) -> None:
        self.shaper.reshape(shape)
        self.fast, self.cut = shape.is_perfect, cut

    def stats(self) -> dict[str, int]:
        return {"frames": self.frames, "dropped": self.dropped, "send_failed": self.send_failed,
                "queued": self.queued}


class Forwarder:
    def __init__(self, run_dir: pathlib.Path, seed: int) -> None:
        self.run_dir = run_dir
        self.hosts = HostSet.from_json((run_dir / "hosts.json").read_text())
        self.links_path = run_dir / "links.json"
        self._links_key: tuple[int, int, int] | None = None
        self.links_version = ""
        self.stopping = False
        # select(2), not epoll: its time-out is in microseconds, epoll's in milliseconds (frames would leave late)
        self.selector = selectors.SelectSelector()
        self.directions: dict[tuple[str, str], Direction] = {}
        self._closers = []
        for index, host in enumerate(self.hosts.hosts):
            sock = open_packet_socket(self.hosts.lan_device(host))
            tap = open_tap(self.hosts.tap_device(host))
            self._closers += [sock.close, lambda fd=tap: os.close(fd)]
            up = Direction(sock.recv_into, lambda data, fd=tap: os.write(fd, data), random.Random(f"{seed}:{index}:up"))
            down = Direction(lambda buffer, fd=tap: os.readv(fd, [buffer]), sock.send,
                             random.Random(f"{seed}:{index}:down"))
            self.selector.register(sock, selectors.EVENT_READ, up)
            self.selector.register(tap, selectors.EVENT_READ, down)
            self.directions[host, "up"], self.directions[host, "down"] = up, down
        self.reload_links()

    def reload_links(self) -> None:
        """Apply links.json if it changed since the last look; a bad file is reported once and ignored."""
        try:
            stat = self.links_path.stat()
        except FileNotFoundError:
            return
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key == self._links_key:
            return
        self._links_key = key
        try:
            links = read_links(self.links_path)
        except (OSError, LinkSpecError) as err:
            print(f"forwarder: ignoring {self.links_path}: {err}", file=sys.stderr, flush=True)
            return
        for host in self.hosts.hosts:
            link = links.get(host, HostLink())
            self.directions[host, "up"].apply(link.up, link.cut)
            self.directions[host, "down"].apply(link.down, link.cut)
        self.links_version = ":".join(map(str, key))
        self.write_stats()  # tells EmulatedHosts.set_link that the change is in force

    def write_stats(self) -> None:
        stats = {"links": self.links_version,
                 "hosts": {host: {name: self.directions[host, name].stats() for name in ("up", "down")}
                           for host in self.hosts.hosts}}
        partial = self.run_dir / "forwarder.json.tmp"
        partial.write_text(json.dumps(stats))
        os.replace(partial, self.run_dir / "forwarder.json")

    def run(self) -> None:
        buffer = bytearray(65536)
        view = memoryview(buffer)
        heap: list[tuple[float, int, Direction, bytes]] = []
        sequence = 0
        next_check = next_stats = 0.0
        last_stats: list[dict[str, int]] = []
        select, monotonic, heappush, heappop = self.selector.select, time.monotonic, heapq.heappush, heapq.heappop
        while not self.stopping:
            timeout = CHECK_S
            if heap:
                timeout = min(timeout, max(heap[0][0] - monotonic(), 0.0))
            events = select(timeout)
            now = monotonic()
            for key, _ in events:
                direction: Direction = key.data
                read = direction.read
                for _ in range(BATCH):
                    try:
                        size = read(buffer)
                    except OSError:  # nothing more to read (EAGAIN), or the set is being taken apart
                        break
                    direction.frames += 1
                    if direction.cut:
                        direction.dropped += 1
                    elif direction.fast and not direction.queued:
                        try:
                            direction.send(view[:size])
                        except OSError:
                            direction.send_failed += 1
                    else:
                        release = direction.shaper.admit(now, size)
                        if release is None:
                            direction.dropped += 1
                        else:
                            heappush(heap, (release, sequence, direction, bytes(view[:size])))
                            sequence += 1
                            direction.queued += 1
            now = monotonic()
            while heap and heap[0][0] <= now:
                _, _, direction, frame = heappop(heap)
                direction.queued -= 1
                if direction.cut:
                    direction.dropped += 1
                    continue
                try:
                    direction.send(frame)
                except OSError:
                    direction.send_failed += 1
            if now >= next_check:
                next_check = now + CHECK_S
                self.reload_links()
                if now >= next_stats:
                    next_stats = now + STATS_S
                    counts = [d.stats() for d in self.directions.values()]
                    if counts != last_stats:
                        last_stats = counts
                        self.write_stats()

    def close(self) -> None:
        self.selector.close()
        for close in self._closers:
            close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_lam.hosts.forwarder", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss and jitter draws (default 0)")
    args = parser.parse_args(argv)
    try:
        forwarder = Forwarder(args.run_dir, args.seed)
    except (OSError, ValueError, KeyError) as err:
        print(f"forwarder: cannot start: {err}", file=sys.stderr, flush=True)
        return 1

    def stop(*_) -> None:
        forwarder.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid_file = args.run_dir / "forwarder.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        forwarder.run()
    finally:
        forwarder.write_stats()
        forwarder.close()
        pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
