"""Fast DDS shared-memory files that no live process holds, found and removed as ``fastdds shm clean`` does.

A Fast DDS participant keeps a segment (``fastdds_<16 hex>``) and a port (``fastdds_port<N>``) in /dev/shm, each
beside a lock file (``_el`` or ``_sl``) that the owner keeps locked while it lives. A graceful end removes them; a
process killed (SIGKILL, a crash) leaves them, 35 MB per segment with edge_lam's profile. A lock that can be taken
means its owner is gone: those files are zombies. A file whose lock is held is never touched, so this is safe to run
while other processes (another test run, a robot's nodes) use Fast DDS. The fastdds tool also removes every
data-sharing segment unconditionally; edge_lam's profiles do not use data sharing, and a live one must not go.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import re
import time
from dataclasses import dataclass, field

__all__ = ["SHM_DIR", "Cleaned", "clean_domain_ports", "clean_zombies", "domain_ports", "held_segments"]

SHM_DIR = pathlib.Path("/dev/shm")
_SEGMENT_LOCK = re.compile(r"^fastdds_[0-9a-z]{16}(_el|_sl)$")
_PORT_LOCK = re.compile(r"^fastdds_port\d{1,5}(_el|_sl)$")
_PORT = re.compile(r"^fastdds_port(\d{1,5})$")


@dataclass
class Cleaned:
    """What a clean removed (file names) and freed, and how many segments and ports are in use."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    in_use: int = 0


def _is_recent(path: pathlib.Path, min_age_s: float) -> bool:
    """A lock file younger than ``min_age_s`` may belong to a process between creating and locking it."""
    try:
        return time.time() - path.stat().st_mtime < min_age_s
    except FileNotFoundError:
        return True


def _is_locked(path: pathlib.Path) -> bool:
    """Whether a live process holds the lock file (an exclusive lock cannot be taken without waiting)."""
    try:
        with open(path, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


def _remove(folder: pathlib.Path, name: str, cleaned: Cleaned) -> None:
    path = folder / name
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return
    cleaned.removed.append(name)
    cleaned.freed_bytes += size


def clean_zombies(folder: pathlib.Path = SHM_DIR, min_age_s: float = 1.0) -> Cleaned:
    """Remove the Fast DDS segments and ports of ``folder`` whose owner is gone; keep every one held, and those
    younger than ``min_age_s`` (Fast DDS creates a lock file, then locks it: never catch one in between)."""
    cleaned = Cleaned()
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return cleaned
    for name in names:
        port = _PORT_LOCK.match(name)
        if not (port or _SEGMENT_LOCK.match(name)):
            continue
        if _is_recent(folder / name, min_age_s) or _is_locked(folder / name):
            cleaned.in_use += 1
            continue
        owned = name[:-3]
        for file in (owned, name, *([f"sem.{owned}_mutex"] if port else [])):
            _remove(folder, file, cleaned)
    return cleaned


def domain_ports(domain_id: int) -> range:
    """The port numbers of a ROS domain (RTPS well-known ports: 7400 + 250 x domain, and the 250 after)."""
    return range(7400 + 250 * domain_id, 7650 + 250 * domain_id)


def clean_domain_ports(domain_id: int, folder: pathlib.Path = SHM_DIR, min_age_s: float = 1.0) -> Cleaned:
    """Remove the port files of ``domain_id`` that no listener holds, with their lock files and mutexes.

    A listener that ends gracefully removes its lock file but leaves the port (the next participant of that number
    reuses it), so `fastdds shm clean` and :func:`clean_zombies` keep them. Only for the end of a run whose domain is
    its own and whose processes have all stopped: a live process of the domain that still sends to a removed port
    would write into a file a new listener of that number never reads."""
    cleaned = Cleaned()
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return cleaned
    ports = domain_ports(domain_id)
    for name in names:
        port = _PORT.match(name)
        if not port or int(port[1]) not in ports:
            continue
        locks = [folder / f"{name}{suffix}" for suffix in ("_el", "_sl")]
        if _is_recent(folder / name, min_age_s) or any(lock.exists() and _is_locked(lock) for lock in locks):
            cleaned.in_use += 1
            continue
        for file in (name, f"{name}_el", f"{name}_sl", f"sem.{name}_mutex"):
            _remove(folder, file, cleaned)
    return cleaned


def held_segments(pid: int, folder: pathlib.Path = SHM_DIR) -> set[str]:
    """The Fast DDS segments of ``folder`` (and their lock files) that process ``pid`` owns: those whose lock file it
    holds exclusively (/proc/locks names the holder's pid and the file's inode); not a peer's segment it maps. Ports
    are left out: a port file outlives its listener by design (the next participant of that index reuses it), and
    the 35 MB a process leaves behind are its segments."""
    inodes = {int(fields[5].rsplit(":", 1)[1]) for fields in map(str.split, _proc_locks())
              if len(fields) > 5 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[4] == str(pid)}
    owned = set()
    for lock in folder.glob("fastdds_*_el"):
        try:
            if _SEGMENT_LOCK.match(lock.name) and lock.stat().st_ino in inodes:
                owned |= {lock.name, lock.name[:-3]}
        except FileNotFoundError:
            continue
    return owned


def _proc_locks() -> list[str]:
    try:
        return pathlib.Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
