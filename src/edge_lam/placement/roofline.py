"""What a step of a unit costs on a host: a roofline. A step reads the unit's weights (and KV cache) once and does
its FLOPs; it takes as long as the slower of the two, memory at the host's bandwidth or arithmetic at its GFLOP/s.

Decoding (one token a step) reads hundreds of bytes per FLOP it does and is bound by memory bandwidth; a prompt's
prefill (hundreds of tokens a step) does hundreds of FLOPs per byte and is bound by compute. The one price covers
both. A host that advertises no bandwidth (0) is priced by FLOPs alone, as before bandwidth was measured.

On top of the roofline, a step pays its dispatch overhead (Python and kernel launches, ``model.step_overhead``),
which the coordinator measures in seconds and carries as the FLOPs that take as long at its reference GFLOP/s: it
runs on the same core as the arithmetic, so a host k times slower at the one is taken as k times slower at the
other (exactly so for hosts emulated with ``compute_scale``). And a unit's matrices stream at its
``read_efficiency`` of the host's bandwidth: the advertised figure is measured on large fp32 matrices, a small
model's layers (and bf16 or int8 kernels) read slower, by a share the coordinator measures too.
"""

from __future__ import annotations

import math

from edge_lam.descriptors import Host
from edge_lam.placement.types import Unit

__all__ = ["roofline_s", "unit_s"]


def roofline_s(flops: float, nbytes: float, gflops: float, bandwidth_gbps: float) -> float:
    """Seconds of a step that does ``flops`` and reads ``nbytes``: the slower of compute and memory. Infinite when
    there are FLOPs and no compute; memory is free when the bandwidth is unknown (0)."""
    if flops > 0 and gflops <= 0:
        return math.inf
    compute = flops / (gflops * 1e9) if flops > 0 else 0.0
    memory = nbytes / (bandwidth_gbps * 1e9) if bandwidth_gbps > 0 else 0.0
    return max(compute, memory)


def unit_s(unit: Unit, host: Host, tokens: int, context_tokens: int) -> float:
    """Seconds of one step of ``unit`` on ``host``: ``tokens`` in flight (1 while decoding, the prompt's length
    for prefill) with ``context_tokens`` already in the cache, and the step's overhead."""
    overhead = roofline_s(unit.overhead_flops_per_step, 0, host.gflops, 0.0)
    return roofline_s(unit.flops(tokens, context_tokens), unit.bytes_read(context_tokens), host.gflops,
                      host.bandwidth_gbps * unit.read_efficiency) + overhead
