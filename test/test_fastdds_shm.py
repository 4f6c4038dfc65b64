"""Nothing left in /dev/shm: a node's graceful end removes its Fast DDS files, and what a killed one leaves is
removed by ``clean_zombies`` (as ``fastdds shm clean`` does) while a live node's files are never touched."""

from __future__ import annotations

import fcntl
import os
import pathlib
import signal
import time

from ament_index_python.packages import get_package_prefix

from conftest import finish
from edge_lam.ros.fastdds_shm import SHM_DIR, clean_domain_ports, clean_zombies, domain_ports, held_segments

LIB = pathlib.Path(get_package_prefix("edge_lam")) / "lib" / "edge_lam"
SEGMENT = "fastdds_0123456789abcdef"
PORT = "fastdds_port7411"


def make(folder: pathlib.Path, *names: str, age_s: float = 60.0) -> None:
    for name in names:
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (time.time() - age_s,) * 2)


def test_files_whose_lock_is_free_are_removed_and_held_or_fresh_ones_kept(tmp_path):
    make(tmp_path, SEGMENT, f"{SEGMENT}_el", PORT, f"{PORT}_el", f"sem.{PORT}_mutex")
    held, fresh = "fastdds_fedcba9876543210", "fastdds_00000000000000aa"
    make(tmp_path, held, f"{held}_el")
    make(tmp_path, fresh, f"{fresh}_el", age_s=0.0)
    make(tmp_path, "fastdds_port7412", "other_file")  # a port without a lock file, something not Fast DDS's
    with open(tmp_path / f"{held}_el", "rb") as lock:  # a live owner's lock (flock: per open file)
        fcntl.flock(lock, fcntl.LOCK_SH)
        cleaned = clean_zombies(tmp_path)
    assert sorted(cleaned.removed) == sorted([SEGMENT, f"{SEGMENT}_el", PORT, f"{PORT}_el", f"sem.{PORT}_mutex"])
    assert cleaned.freed_bytes == 500 and cleaned.in_use == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [held, f"{held}_el", fresh, f"{fresh}_el", "fastdds_port7412", "other_file"])


def test_a_domains_port_files_no_listener_holds_are_removed_at_the_end_of_its_run(tmp_path):
    assert domain_ports(0) == range(7400, 7650) and 15411 in domain_ports(32)
    left = ["fastdds_port15411", "sem.fastdds_port15411_mutex"]  # a graceful end leaves these: no lock file
    dead = ["fastdds_port15413", "fastdds_port15413_el", "sem.fastdds_port15413_mutex"]  # a killed listener's
    live = ["fastdds_port15415", "fastdds_port15415_el"]
    other_domain = ["fastdds_port7411", "sem.fastdds_port7411_mutex"]
    make(tmp_path, *left, *dead, *live, *other_domain, "fastdds_port15417")
    make(tmp_path, "fastdds_port15419", age_s=0.0)  # just made: its listener may be about to lock it
    with open(tmp_path / "fastdds_port15415_el", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        cleaned = clean_domain_ports(32, tmp_path)
    assert sorted(cleaned.removed) == sorted([*left, *dead, "fastdds_port15417"]) and cleaned.in_use == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*live, *other_domain, "fastdds_port15419"])


def test_a_graceful_end_leaves_nothing_and_a_killed_nodes_files_are_cleaned_but_not_a_live_ones(processes):
    nodes = [processes.start(LIB / "tensor_echo", "--ros-args", "-r", f"__node:=shm_echo_{i}") for i in range(3)]
    deadline = time.monotonic() + 60
    while not all(held_segments(n.pid) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    graceful, killed, live = nodes
    files = [held_segments(n.pid) for n in nodes]
    assert all(files), "a node mapped no Fast DDS segment: is shared memory off in the profile?"
    time.sleep(1.0)  # clean_zombies keeps lock files younger than a second

    graceful.send_signal(signal.SIGINT)
    assert finish(graceful, 10)[0] == 0
    assert not [name for name in files[0] if (SHM_DIR / name).exists()], "a graceful end left its segments"

    killed.kill()
    killed.wait(10)
    left = [name for name in files[1] if (SHM_DIR / name).exists()]
    assert left, "a killed node left nothing: nothing to clean"
    clean_zombies()
    assert not [name for name in files[1] if (SHM_DIR / name).exists()]
    assert all((SHM_DIR / name).exists() for name in files[2]), "a live node's segment was removed"
    assert live.poll() is None
