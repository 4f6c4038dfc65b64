"""What a host agent measures of its own host, as plain functions: reference compute, and compute left after load.

The reference is a float32 matrix product in torch, the library the modules themselves run in, so that the
advertised GFLOP/s rank hosts the way their modules will. It is a yardstick, not a prediction: a decoding step is
a matrix-vector product and runs well below it, but by a similar factor on every host.
"""

from __future__ import annotations

import math
import statistics
import time

__all__ = ["reference_gflops", "scaled"]


def reference_gflops(size: int = 512, repeats: int = 5, *, threads: int | None = None) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 matmul, the median of ``repeats`` timed runs after one warm-up.

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
    # The median, not the mean: one preemption by another process should not make a host look slow.
    return 2.0 * size**3 / statistics.median(times) / 1e9


def scaled(gflops: float, scale: float = 1.0, load: float = 0.0) -> float:
    """Compute a host offers to new work: measured GFLOP/s x ``scale`` (emulates a slower host, e.g. 0.25 for a
    robot beside an edge box) x the idle fraction (1 - ``load``, load clipped to [0, 1]).

    ``load`` should leave out the host's own modules, or a busy host would look slower the more it is given.
    """
    if not (math.isfinite(gflops) and gflops >= 0 and scale >= 0):
        raise ValueError(f"gflops {gflops} and scale {scale} must be finite and non-negative")
    idle = 1.0 - min(1.0, max(0.0, load)) if math.isfinite(load) else 1.0
    return gflops * scale * idle
