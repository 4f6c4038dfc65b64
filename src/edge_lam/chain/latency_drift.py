"""How the plan's expected per-token latency compares with what a request measured, with no ROS: the gateway warns
when they drift apart, and the benches report their ratio.

A request's per-token latency is its decode alone: the time from its first token to its last over the tokens in
between, so the prompt's prefill (priced apart, by FLOPs) does not count. The plan's figure is the coordinator's
``PlacementPlan.expected_latency_s``: every module's roofline price and every hop, for one token.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_TOLERANCE", "DriftWatch", "decode_s_per_token", "drift_warning", "expected_over_measured"]

DEFAULT_TOLERANCE = 0.25  # the plan is honest while the measured latency is within 25% of it


def decode_s_per_token(total_s: float, time_to_first_token_s: float, tokens: int) -> float | None:
    """Seconds per token after the first, from a request's total time, its time to the first token and its token
    count; None when there is no second token to time (or the figures make no sense)."""
    if tokens < 2 or not (math.isfinite(total_s) and math.isfinite(time_to_first_token_s)):
        return None
    decode_s = total_s - time_to_first_token_s
    return decode_s / (tokens - 1) if decode_s > 0 else None


def expected_over_measured(expected_s: float, measured_s: float) -> float:
    """The plan's expected per-token latency over the measured one: 1.0 is an exact plan, below it an optimistic
    one. NaN when either is not a positive figure."""
    if not (expected_s > 0 and measured_s > 0 and math.isfinite(expected_s) and math.isfinite(measured_s)):
        return math.nan
    return expected_s / measured_s


def drift_warning(expected_s: float, measured_s: float, tolerance: float = DEFAULT_TOLERANCE) -> str | None:
    """A warning when the measured per-token latency is more than ``tolerance`` away from the expected one (either
    way), naming both; None within it, or when there is no expected figure to compare with."""
    if not (expected_s > 0 and math.isfinite(expected_s) and measured_s > 0 and math.isfinite(measured_s)):
        return None
    drift = measured_s / expected_s - 1.0
    if abs(drift) <= tolerance:
        return None
    return (f"measured {measured_s * 1e3:.1f} ms per token, the plan expected {expected_s * 1e3:.1f} ms "
            f"({drift:+.0%}, beyond {tolerance:.0%}): the placement's prices are off for this fleet")


class DriftWatch:
    """``drift_warning`` at most once per ``period_s`` (times in seconds on any monotonic clock, passed in): a
    gateway answering many requests on a mispriced plan says so, not once per request."""

    def __init__(self, period_s: float = 60.0, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.period_s, self.tolerance = period_s, tolerance
        self._warned_at = -math.inf

    def check(self, expected_s: float, measured_s: float, now: float) -> str | None:
        warning = drift_warning(expected_s, measured_s, self.tolerance)
        if warning is None or now - self._warned_at < self.period_s:
            return None
        self._warned_at = now
        return warning
