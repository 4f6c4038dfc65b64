"""Where the time of one report went, from figures measured in different processes.

The encoders measure their own work (``encode_seconds`` of the newest tokens used; the encoders run side by side, so
the stage ``encode`` is the slowest of them), the shards measure each module,
the gateway measures the whole request, and the reporter measures the wall time from its request to the final
answer. The residuals are named for what they hold: ``transfer_and_queueing`` is the gateway's total less the
modules' compute (hidden states on the wire, waiting, sampling), ``request_and_result`` is the reporter's wall time
less the gateway's total (the two hops to and from the gateway). ``total`` is encoding plus the reporter's wall
time, so the stages add up to it unless a process reports more time than another one measured around it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edge_lam.descriptors import Stage

__all__ = ["report_timings", "stages_sum_s"]


def report_timings(encode_s: Mapping[str, float], gateway: Iterable[Stage], latency_s: float) -> list[Stage]:
    """Encoding, the gateway's module stages and residuals, the reporter's hops and the total."""
    encode = max(encode_s.values(), default=0.0)
    stages = [Stage("encode", "", encode)]
    gateway_total = 0.0
    for timing in gateway:
        if timing.stage == "total":
            gateway_total = timing.seconds
        else:
            stages.append(Stage(timing.stage, timing.host_id, timing.seconds))
    stages.append(Stage("request_and_result", "", max(latency_s - gateway_total, 0.0)))
    stages.append(Stage("total", "", encode + latency_s))
    return stages


def stages_sum_s(stages: Iterable[Stage]) -> float:
    """The sum of every stage but ``total``: what the breakdown says the total is."""
    return sum(s.seconds for s in stages if s.stage != "total")
