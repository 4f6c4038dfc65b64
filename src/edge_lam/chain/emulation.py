"""Make this machine behave like a slower host behind a slower link, so a placement can be timed on one machine.

For benchmarks and tests only: a shard sleeps so that each step takes ``compute_slowdown`` times its measured
compute (4.0 makes it a 0.25x host), and a packet that crosses a link waits the link's latency plus its bytes over
the bandwidth before the shard reads it (``input_link``) or after the shard is done with it (``output_link``, for
the hop back to the gateway). Both default to nothing: a real deployment pays its own costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EmulatedLink", "compute_delay_s"]


@dataclass(frozen=True)
class EmulatedLink:
    latency_s: float
    bandwidth_bps: float

    def __post_init__(self) -> None:
        if not (self.latency_s >= 0 and self.bandwidth_bps > 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"an emulated link needs latency_s >= 0 and bandwidth_bps > 0, got {self}")

    @staticmethod
    def from_parameter(values: Sequence[float]) -> EmulatedLink | None:
        """``[latency_s, bandwidth_bps]``, or None for an empty list (no link to emulate)."""
        if not values:
            return None
        if len(values) != 2:
            raise ValueError(f"an emulated link is [latency_s, bandwidth_bps], got {list(values)}")
        return EmulatedLink(float(values[0]), float(values[1]))

    def delay_s(self, nbytes: int) -> float:
        return self.latency_s + 8 * nbytes / self.bandwidth_bps


def compute_delay_s(computed_s: float, slowdown: float) -> float:
    """How much longer a step must take for ``slowdown`` times its measured compute (never negative)."""
    return max(computed_s * (slowdown - 1.0), 0.0)
