"""Make this machine behave like a slower host behind a slower link, so a placement can be timed on one machine.

For benchmarks and tests only: a shard given ``compute_slowdown`` takes that many times its measured compute per
step (4.0 makes it a 0.25x host), and a packet that crosses a link arrives the link's latency plus its bytes over
the bandwidth later (``input_link`` before the shard reads it, ``output_link`` after it is done with it, for the hop
back to the gateway). Both default to nothing: a real deployment pays its own costs.

``DelayLine`` says when: when each packet may be computed and when published. It never sleeps; the node holds the
packets meanwhile (``link.delayed_release``), so its executor keeps serving everything else. Times are seconds on
any monotonic clock, passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from edge_lam.descriptors import Link

__all__ = ["DelayLine", "compute_delay_s", "link_parameter"]


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


@dataclasses.dataclass
class _Wire:
    """One direction of an emulated link: bytes go onto it one packet at a time, each then flies for the latency,
    so packets come out in the order they went in."""

    link: Link | None
    free_at: float = float("-inf")

    def deliver(self, sent_s: float, nbytes: int) -> float:
        if self.link is None:
            return sent_s
        delivered = max(sent_s, self.free_at) + self.link.transfer_s(nbytes)
        self.free_at = delivered - self.link.latency_s
        return delivered


class DelayLine:
    """When the packets of an emulated host may be computed and published, in the order they arrived.

    The emulated host runs one step at a time: a step starts once its packet has crossed the input link and the
    step before is done, and keeps the host busy ``slowdown`` times the compute it really took; its output is
    published once it has crossed the output link.
    """

    def __init__(self, slowdown: float = 1.0, input_link: Link | None = None, output_link: Link | None = None
                 ) -> None:
        if slowdown < 1.0:
            raise ValueError(f"compute_slowdown must be >= 1 (a host can't be made faster), got {slowdown}")
        self.slowdown = slowdown
        self._input, self._output = _Wire(input_link), _Wire(output_link)
        self._host_free_at = float("-inf")

    @property
    def delays(self) -> bool:
        """Whether there is anything to emulate (without, packets are computed and published at once)."""
        return self.slowdown > 1.0 or self._input.link is not None or self._output.link is not None

    def arrive(self, now_s: float, nbytes: int) -> float:
        """A packet of ``nbytes`` arrives now: when it has crossed the input link."""
        return self._input.deliver(now_s, nbytes)

    def start(self, delivered_s: float) -> float:
        """When the emulated host may compute a packet delivered then: once the step before is done."""
        return max(delivered_s, self._host_free_at)

    def finish(self, start_s: float, compute_s: float, nbytes: int) -> float:
        """The step that started then took ``compute_s`` here and made ``nbytes``: when to publish them."""
        self._host_free_at = start_s + compute_s * self.slowdown
        return self._output.deliver(self._host_free_at, nbytes)
