"""Make this machine behave like a slower host behind a slower link, so a placement can be timed on one machine.

For benchmarks and tests only: a shard sleeps so that each step takes ``compute_slowdown`` times its measured
compute (4.0 makes it a 0.25x host), and a packet that crosses a link waits the link's latency plus its bytes over
the bandwidth before the shard reads it (``input_link``) or after the shard is done with it (``output_link``, for
the hop back to the gateway). Both default to nothing: a real deployment pays its own costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_lam.descriptors import Link

__all__ = ["compute_delay_s", "link_parameter"]


def link_parameter(values: Sequence[float]) -> Link | None:
    """``[latency_s, bandwidth_bps]`` as a link with unnamed ends, or None for an empty list (no link to emulate)."""
    if not values:
        return None
    if len(values) != 2:
        raise ValueError(f"an emulated link is [latency_s, bandwidth_bps], got {list(values)}")
    try:
        return Link("", "", float(values[0]), float(values[1]))
    except ValueError as err:
        raise ValueError(f"emulated link {list(values)}: {err}") from None


def compute_delay_s(computed_s: float, slowdown: float) -> float:
    """How much longer a step must take for ``slowdown`` times its measured compute (never negative)."""
    return max(computed_s * (slowdown - 1.0), 0.0)
