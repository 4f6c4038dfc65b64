"""When a better plan is worth moving modules for: one explicit margin of hysteresis."""

from __future__ import annotations

import math

__all__ = ["should_move"]


def should_move(current_latency_s: float, best_latency_s: float, *, min_gain: float = 0.1,
                min_gain_s: float = 0.0) -> bool:
    """Hysteresis: leave the plan in force unless the best plan is faster by more than ``min_gain`` of the current
    latency (and by more than ``min_gain_s``). Moving modules costs reloads and KV replays, and measurements
    jitter; without a margin two near-equal plans would swap back and forth. A broken plan (infinite) always moves.
    """
    if not math.isfinite(current_latency_s):
        return math.isfinite(best_latency_s)
    gain = current_latency_s - best_latency_s
    return gain > 0 and gain > max(min_gain * current_latency_s, min_gain_s)

