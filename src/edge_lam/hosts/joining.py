"""Joining an emulated host from inside a process: the calling thread enters a named network namespace.

Python 3.11 has no ``os.setns``; libc's ``setns`` does the same. A participant created inside ``joined`` binds its
sockets and starts its threads in that namespace, and keeps them after the block: so the demo's monitor (or a
bench's driver) can talk to one emulated host's peers as a process of that host would, and its ``ip`` commands
still run from the machine's own namespace once the block ends.

Join before the process creates its first ROS participant, and create them all in one namespace: Fast DDS 3.2 in
a process that created a participant in one network namespace (even one destroyed since) gives a participant
created later in another namespace no discovery there (seen: peers in that namespace never list it). A process
that has made participants already (pytest's) runs its client in a fresh child that joins first
(test/test_network.py's ``in_host``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

__all__ = ["NamespaceError", "joined"]

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where `ip netns add` names its namespaces


class NamespaceError(OSError):
    """The thread could not enter (or leave) a network namespace: which one, and why."""


def _setns(fd: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"cannot enter the network namespace {what}: {os.strerror(err)} (needs root, "
                             "CAP_SYS_ADMIN)")


@contextlib.contextmanager
def joined(namespace: str) -> Iterator[None]:
    """Run the calling thread in the network namespace ``namespace`` (made by ``ip netns add``) for the block."""
    try:
        target = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
    except OSError as err:
        raise NamespaceError(err.errno, f"no network namespace {namespace!r} in {NETNS_DIR}: {err.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(target, namespace)
        try:
            yield
        finally:
            _setns(home, "of this process")
    finally:
        os.close(target)
        os.close(home)
