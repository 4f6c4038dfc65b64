"""What a host agent measures of its own host, as plain functions: reference compute, memory bandwidth, compute
left after load, CPU load net of its own work, and memory.

The parsers take the text of ``/proc/stat`` and ``/proc/meminfo`` so they can be tested on any text; the two
``read_*`` functions are the only ones that touch the files. The reference is a float32 matrix product in torch, the
library the modules themselves run in, so that the advertised GFLOP/s rank hosts the way their modules will. It is a
yardstick, not a prediction: a decoding step is a matrix-vector product and runs well below it, but by a similar
factor on every host. Decoding is bound by memory bandwidth instead (every weight is read once per token), so the
agent measures that too: matrix-vector products, the kernel a decode step spends its time in, over matrices the
size of a decoder layer's that together are far larger than the caches."""

from __future__ import annotations

import dataclasses
import math
import os
import time

__all__ = [
    "CpuSample",
    "cpu_sample",
    "load_between",
    "mem_available_bytes",
    "read_cpu_sample",
    "read_mem_available_bytes",
    "reference_bandwidth_gbps",
    "reference_gflops",
    "scaled",
]


def reference_gflops(size: int = 512, repeats: int = 5, *, threads: int | None = None) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 matmul, the fastest of ``repeats`` timed runs after one warm-up.

    ``threads`` sets torch's intra-op threads for the measurement and restores them after; None measures with the
    process's current setting, which is what modules loaded into this process will get. At the default size a
    run is 0.27 GFLOP: tens of milliseconds on one core of a robot-class CPU.
    """
    import torch  # on demand: hosts that only price plans need no torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        out = torch.empty(size, size)
        torch.matmul(a, b, out=out)  # warm-up: first-call allocation and thread-pool start-up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    # The fastest run, not the median: the figure is what the host can do (its load is advertised apart), and other
    # processes only ever make a run slower; on a busy machine most runs are preempted, and the median with them.
    return 2.0 * size**3 / min(times) / 1e9


def reference_bandwidth_gbps(total_bytes: int = 128 * 2**20, matrix_bytes: int = 4 * 2**20, repeats: int = 7, *,
                             threads: int | None = None) -> float:
    """GB/s (1e9 bytes/s) that float32 matrix-vector products read weights at: one vector through ``total_bytes``
    of ``matrix_bytes`` matrices, the fastest of ``repeats`` timed passes after one warm-up.

    128 MiB is 4x the largest last-level cache of a desktop or edge CPU, so no pass finds its matrices cached and
    every one streams from memory; matrices of a decoder layer's size keep the per-call costs a real decode step
    pays. The fastest pass, as for the GFLOP/s and for the same reason: other processes only make a pass slower
    (agents that start together measure at once; the median of 5 passes of two agents measuring side by side on 2
    loaded cores came out at half the fastest). A pass is 10-40 ms on one core; the buffer is filled, not drawn at
    random, which would cost more than the measurement. ``threads`` as for :func:`reference_gflops`.
    """
    import torch

    if not (0 < matrix_bytes <= total_bytes and repeats >= 1):
        raise ValueError(f"need 0 < matrix_bytes {matrix_bytes} <= total_bytes {total_bytes} and repeats >= 1")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        cols = 1024
        rows = max(1, matrix_bytes // (4 * cols))
        matrices = [torch.full((rows, cols), 0.5) for _ in range(max(1, total_bytes // (4 * rows * cols)))]
        vector = torch.full((1, cols), 0.5)
        times = []
        for _ in range(repeats + 1):  # the first pass warms up: page faults, thread-pool start-up
            start = time.perf_counter()
            for matrix in matrices:
                torch.nn.functional.linear(vector, matrix)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return len(matrices) * rows * cols * 4 / min(times[1:]) / 1e9


def scaled(gflops: float, scale: float = 1.0, load: float = 0.0) -> float:
    """Compute (or memory bandwidth) a host offers to new work: measured GFLOP/s x ``scale`` (emulates a slower
    host, e.g. 0.25 for a robot beside an edge box) x the idle fraction (1 - ``load``, load clipped to [0, 1]).

    ``load`` should leave out the host's own modules, or a busy host would look slower the more it is given.
    """
    if not (math.isfinite(gflops) and gflops >= 0 and scale >= 0):
        raise ValueError(f"gflops {gflops} and scale {scale} must be finite and non-negative")
    idle = 1.0 - min(1.0, max(0.0, load)) if math.isfinite(load) else 1.0
    return gflops * scale * idle


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """CPU seconds of the whole machine (all cores together) and of this process, at one moment."""

    busy_s: float
    total_s: float
    own_s: float


def cpu_sample(stat_text: str, own_s: float, ticks_per_s: float) -> CpuSample:
    """The machine's busy and total CPU time from ``/proc/stat`` text (its aggregate ``cpu`` line)."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal; guest time is already counted in user and nice
            ticks = [int(v) for v in fields[1:9]]
            idle = sum(ticks[3:5])
            total = sum(ticks)
            return CpuSample((total - idle) / ticks_per_s, total / ticks_per_s, own_s)
    raise ValueError("no aggregate 'cpu' line in the /proc/stat text")


def read_cpu_sample() -> CpuSample:
    with open("/proc/stat") as stat:
        return cpu_sample(stat.read(), time.process_time(), os.sysconf("SC_CLK_TCK"))


def load_between(earlier: CpuSample, later: CpuSample) -> float:
    """The busy fraction of all cores between two samples, less this process's own share, in [0, 1].

    The agent's own work (its shards) is left out: the coordinator should see how much of the host others use,
    or a host would look busier the more modules it is given. The kernel counts /proc/stat in ticks and a process
    to the nanosecond, so the difference can dip below zero; it is clamped.
    """
    total = later.total_s - earlier.total_s
    if total <= 0:
        return 0.0
    others = (later.busy_s - earlier.busy_s) - (later.own_s - earlier.own_s)
    return min(1.0, max(0.0, others / total))


def mem_available_bytes(meminfo_text: str) -> int:
    """``MemAvailable`` of ``/proc/meminfo`` text, in bytes: what can be given to new work without swapping."""
    for line in meminfo_text.splitlines():
        if line.startswith("MemAvailable:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected unit '{unit}' in /proc/meminfo")
            return int(value) * 1024
    raise ValueError("no MemAvailable line in the /proc/meminfo text")


def read_mem_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        return mem_available_bytes(meminfo.read())
