"""Turn off a device's transmit checksum and segmentation offloads (what ``ethtool -K DEV tx off tso off gso off``
does; ethtool is not installed here), run inside a host's namespace: ``python -m edge_lam.hosts.offloads eth0``.

Why: with offloads on, a host hands its veth frames whose UDP checksum is still to be filled in and TCP segments of
64 KB. The forwarder copies frames as bytes into a TAP device, which marks them complete, so the receiving host
would drop every UDP datagram for a bad checksum. With offloads off the sending stack writes real frames.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
import sys

__all__ = ["turn_off_offloads"]

SIOCETHTOOL = 0x8946
# ethtool_value commands (linux/ethtool.h): get and set of tx checksum, TCP segmentation, generic segmentation.
GET_TX_CSUM, SET_TX_CSUM, SET_TSO, SET_GSO = 0x16, 0x17, 0x1F, 0x24


def _ethtool(device: str, command: int, value: int = 0) -> int:
    buffer = ctypes.create_string_buffer(struct.pack("II", command, value), 8)
    request = struct.pack("16sP", device.encode(), ctypes.addressof(buffer)).ljust(40, b"\0")  # struct ifreq
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    return struct.unpack("II", buffer.raw)[1]


def turn_off_offloads(device: str) -> None:
    """Raise OSError if the device refuses or still offloads checksums afterwards."""
    for command in (SET_TX_CSUM, SET_TSO, SET_GSO):
        _ethtool(device, command, 0)
    if _ethtool(device, GET_TX_CSUM):
        raise OSError(f"{device} still offloads transmit checksums")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m edge_lam.hosts.offloads DEVICE", file=sys.stderr)
        return 2
    try:
        turn_off_offloads(sys.argv[1])
    except OSError as err:
        print(f"edge_lam.hosts.offloads: {sys.argv[1]}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
